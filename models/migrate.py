"""Bring the database schema to the newest revision: ``python -m models.migrate``.

Replicas may start together, so the upgrade runs under a PostgreSQL advisory lock.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, pool, text

from settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 727_001


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    config = alembic_config(settings)
    engine = create_engine(settings.database_url, poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    upgrade(settings)
    logging.getLogger("models.migrate").info("schema is at head")
    return 0


if __name__ == "__main__":
    sys.exit(main())
