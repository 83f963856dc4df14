"""The game rules on a real PostgreSQL, in-process: no Celery, no HTTP, no Redis.

One database is made and migrated per test run (as ``tests/conftest.py`` makes the stack's);
each test gets a session inside a transaction that is rolled back afterwards. The session joins
that transaction through a savepoint, so the rules' own savepoints nest inside it and nothing
a test does outlives it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from models.db import make_engine
from models.migrate import upgrade
from settings import Settings
from tests.conftest import DEFAULT_DATABASE_URL, database_url_for, scratch_database
from tests.rules.harness import ADMIN_TOKEN, Game


@pytest.fixture(scope="session")
def rules_settings() -> Iterator[Settings]:
    """A fresh database ``quiz_rules_<random>`` at the newest migration, and its app role; dropped after."""
    server_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    name = f"quiz_rules_{uuid.uuid4().hex[:10]}"
    app_role = f"{name}_app"
    settings = Settings.from_env({
        "DATABASE_URL": database_url_for(server_url, name),
        # The rules run as the consumers do: as the app's role, which owns no table.
        "APP_DATABASE_URL": database_url_for(server_url, name, username=app_role),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "QUIZ_ENV": "test",
        "BOARD_QUEUES": "4",
        "COMPETITION_QUEUES": "1",
    })
    with scratch_database(server_url, name, app_role):
        upgrade(settings)
        yield settings


@pytest.fixture(scope="session")
def rules_engine(rules_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(rules_settings, pool_size=1)
    yield engine
    engine.dispose()


def _refuse_commit() -> None:
    raise AssertionError("a game rule committed; rules leave the transaction to the consumer")


@pytest.fixture
def session(rules_engine: Engine) -> Iterator[Session]:
    """A session whose every change is rolled back after the test, savepoints and all."""
    with rules_engine.connect() as connection:
        outer = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        # Only Session.commit: a savepoint's release (begin_nested) is the consumer's, and allowed.
        session.commit = _refuse_commit  # type: ignore[method-assign]
        try:
            yield session
        finally:
            session.close()
            outer.rollback()


@pytest.fixture
def game(session: Session, rules_settings: Settings) -> Game:
    return Game(session, rules_settings)
