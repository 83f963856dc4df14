"""Engine and session factories. One engine per process, created after fork."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from settings import Settings


def make_engine(settings: Settings, pool_size: int | None = None, max_overflow: int | None = None) -> Engine:
    """``max_overflow``: connections opened beyond ``pool_size`` under a burst, each closed again when
    returned (default: as many as ``pool_size``)."""
    size = pool_size or settings.db_pool_size
    # The app's role (APP_DATABASE_URL), not the owner that migrations run as.
    return create_engine(
        settings.app_database,
        pool_size=size,
        max_overflow=size if max_overflow is None else max_overflow,
        # No ping per checkout: a dropped connection fails one query, is invalidated with the
        # pool, and the API answers that request with a 503.
        pool_pre_ping=False,
        pool_recycle=1800,
        pool_timeout=5,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: responders serialise objects after the commit.
    return sessionmaker(engine, expire_on_commit=False)


def make_autocommit_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose every statement commits on its own: one round trip, no BEGIN/COMMIT.

    For the API's hot path, where each statement stands alone (a lookup, one INSERT).
    """
    return sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
