"""Engine and session factories. One engine per process, created after fork."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from settings import Settings


def make_engine(settings: Settings, pool_size: int | None = None) -> Engine:
    size = pool_size or settings.db_pool_size
    return create_engine(
        settings.database_url,
        pool_size=size,
        max_overflow=size,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=5,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: responders serialise objects after the commit.
    return sessionmaker(engine, expire_on_commit=False)
