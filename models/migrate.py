"""Bring the database schema to the newest revision: ``python -m models.migrate``.

Replicas may start together, so the upgrade runs under a PostgreSQL advisory lock.

Migrations run as ``DATABASE_URL``'s role, which owns every table. When ``APP_DATABASE_URL``
names another role, the same transaction creates that role if it is missing (LOGIN, nothing
more) and grants it what the app needs: read and write on the game tables, but only SELECT and
INSERT on the audit log. Owning no table, it cannot disable the audit log's append-only
triggers, and it is refused if it is a superuser.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, String, create_engine, pool, text
from sqlalchemy.engine import make_url

from settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 727_001


class AppRoleError(RuntimeError):
    """APP_DATABASE_URL names a role the app must not run as."""


def ensure_app_role(connection: Connection, role: str, password: str | None) -> None:
    """Create ``role`` if missing and grant it the app's privileges on this database (idempotent)."""
    quote = connection.dialect.identifier_preparer.quote
    literal = String().literal_processor(connection.dialect)
    assert literal is not None
    name = quote(role)
    secret = f" PASSWORD {literal(password)}" if password else ""
    # Another database's migrate on the same server may create it at the same moment.
    connection.execute(text(
        f"DO $$ BEGIN CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION{secret}; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    ))
    if password:
        connection.execute(text(f"ALTER ROLE {name} PASSWORD {literal(password)}"))
    superuser = connection.scalar(text("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = :r"),
                                  {"r": role})
    if superuser:
        raise AppRoleError(f"APP_DATABASE_URL's role {role!r} is a superuser; the app must not be one")
    database = quote(connection.scalar(text("SELECT current_database()")))
    for statement in (
        f"GRANT CONNECT ON DATABASE {database} TO {name}",
        f"GRANT USAGE ON SCHEMA public TO {name}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {name}",
        # Append-only for the app, on top of the triggers it cannot drop (it owns no table).
        f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM {name}",
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM {name}",
    ):
        connection.execute(text(statement))


def app_role(settings: Settings) -> tuple[str, str | None] | None:
    """The role (and password) APP_DATABASE_URL connects as, if it is not the owner's."""
    if not settings.app_database_url:
        return None
    app, owner = make_url(settings.app_database_url), make_url(settings.database_url)
    if not app.username or app.username == owner.username:
        return None
    return app.username, app.password


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
            role = app_role(settings)
            if role is not None:
                ensure_app_role(connection, *role)
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
