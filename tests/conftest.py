"""Session fixtures: an isolated database and Redis DB, and the real processes running on them.

Unit tests ask for none of these, so ``pytest tests/unit`` starts nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, create_engine, pool, text
from sqlalchemy.engine import make_url

from models.broker import Producer, control_app, producer
from models.kinds import all_queues
from models.migrate import upgrade
from settings import Settings
from tests.support import ADMIN_TOKEN, Api, Db, Listener, Stack, free_port, unique
from workers.jobs import WorkerContext

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TEST_REDIS_DB = 11
# Celery's queue names are the same in every run, so two test runs on one Redis DB would eat each
# other's jobs; a concurrent second run takes the next free index.
SPARE_REDIS_DBS = range(TEST_REDIS_DB, 16)

_stack: Stack | None = None


def redis_url_with_db(url: str, db: int) -> str:
    """The same Redis server, another database index (``redis://host:port/<db>``)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def database_url_for(server_url: str, database: str, username: str | None = None) -> str:
    url = make_url(server_url).set(database=database)
    if username is not None:
        # The app's role: no password, which a trust-auth server (this machine's, CI's) accepts.
        url = url.set(username=username, password=None)
    return url.render_as_string(hide_password=False)


def _server_engine(server_url: str) -> Engine:
    return create_engine(Settings.from_env({"DATABASE_URL": server_url}).database_url,
                         poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")


@contextlib.contextmanager
def scratch_database(server_url: str, name: str, app_role: str) -> Iterator[None]:
    """Database ``name`` created on the server for the block, then dropped with the app's role."""
    server = _server_engine(server_url)
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield
    finally:
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{app_role}"'))
        server.dispose()


@contextlib.contextmanager
def redis_db_lease(base_url: str) -> Iterator[int]:
    """An exclusive lease (a file lock) on a Redis DB index for this test run: 11 if free."""
    server = hashlib.sha256(urlsplit(base_url).netloc.encode()).hexdigest()[:12]
    candidates = list(SPARE_REDIS_DBS)
    for attempt, index in enumerate([*candidates, TEST_REDIS_DB]):
        last = attempt == len(candidates)  # every index busy: queue behind the run on DB 11
        handle = (Path(tempfile.gettempdir()) / f"quiz-tests-redis-{server}-{index}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if last else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield index
        finally:
            handle.close()
        return


@pytest.fixture(scope="session")
def test_env() -> Iterator[dict[str, str]]:
    """A fresh database ``quiz_test_<random>`` and Redis DB 11; dropped and flushed around the run."""
    server_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    base_redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    with redis_db_lease(base_redis_url) as index:
        yield from _test_env(server_url, redis_url_with_db(base_redis_url, index))


def _test_env(server_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    name = f"quiz_test_{uuid.uuid4().hex[:10]}"
    # Roles are server-wide, so each run has its own, created by the migration below.
    app_role = f"{name}_app"
    api_port = free_port()
    env = {
        "DATABASE_URL": database_url_for(server_url, name),
        # The stack connects as a non-superuser role, as in production; migrations as the owner.
        "APP_DATABASE_URL": database_url_for(server_url, name, username=app_role),
        "SECRET_KEY": "test-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"quiztest{uuid.uuid4().hex[:8]}",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "QUIZ_ENV": "test",
        "BOARD_QUEUES": "4",
        "COMPETITION_QUEUES": "1",
        "API_HOST": "127.0.0.1",
        "API_PORT": str(api_port),
        "API_WORKERS": "2",
        "API_THREADS": "32",
        "REALTIME_HOST": "127.0.0.1",
        "REALTIME_PORT": str(free_port(exclude=[api_port])),
        "REALTIME_ASYNC_MODE": "eventlet",
        "BROADCAST_INTERVAL": "0.25",
        "SWEEP_AFTER": "30",
        "SWEEP_INTERVAL": "5",
        # PostgreSQL's max_connections is shared with whatever else runs on this server.
        "DB_POOL_SIZE": "5",
        # Every test client shares 127.0.0.1; the per-address limit would model one client, not hundreds.
        "RATE_LIMIT_IP": "1000000",
        "RATE_LIMIT_READ_IP": "1000000",
        "RATE_LIMIT_REGISTER_IP": "1000000",
        "LOG_LEVEL": "INFO",
    }
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    with scratch_database(server_url, name, app_role):
        upgrade(Settings.from_env(env))
        yield env


@pytest.fixture(scope="session")
def settings(test_env: dict[str, str]) -> Settings:
    return Settings.from_env(test_env)


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, test_env: dict[str, str], settings: Settings) -> Iterator[Stack]:
    """The API, one Celery worker per queue and the realtime server, as real subprocesses."""
    global _stack
    log_dir = Path(tempfile.mkdtemp(prefix="quiz-test-logs-"))
    env = {**os.environ, **test_env, "PYTHONUNBUFFERED": "1"}
    stack = Stack(settings, env, log_dir)
    _stack = stack
    try:
        stack.start_api()
        stack.start_realtime()
        queues = all_queues(settings)
        for queue in queues:
            stack.start_worker(queue)
        stack.wait_http(stack.api_url + "/readyz")
        stack.wait_http(stack.realtime_url + "/healthz")
        stack.wait_workers(queues)
        yield stack
    finally:
        stack.stop_all()
        _stack = None
        if request.session.testsfailed:
            print(f"\nstack logs: {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = create_engine(settings.database_url, pool_size=3, max_overflow=5)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def db(engine: Engine) -> Db:
    return Db(engine)


@pytest.fixture
def broker(settings: Settings) -> Iterator[redis.Redis]:
    """A plain client on the broker, to look at the queues' lists as kombu keeps them."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.fixture
def sender(settings: Settings) -> Iterator[Producer]:
    """A job sender on the test broker, for sending messages as the API or the sweeper would."""
    made = producer(settings)
    yield made
    made.close()


@pytest.fixture
def celery(settings: Settings) -> Iterator[Celery]:
    """A Celery app on the test broker (with the stack's configuration), for reading its events."""
    app = control_app(settings)
    yield app
    app.close()


@pytest.fixture
def worker_context(settings: Settings) -> Iterator[WorkerContext]:
    """A worker's context in this process, to run jobs beside (or race) the real workers."""
    ctx = WorkerContext.create(settings)
    yield ctx
    ctx.engine.dispose()
    ctx.live.redis.close()


@pytest.fixture
def api(stack: Stack) -> Iterator[Api]:
    client = Api(stack.api_url)
    yield client
    client.close()


@pytest.fixture
def competition(api: Api) -> dict[str, Any]:
    """A running competition of this test's own."""
    return api.create_competition(unique("comp"))


@pytest.fixture
def listen(stack: Stack) -> Iterator[Callable[..., Listener]]:
    """Connect Socket.IO clients; all are disconnected after the test."""
    listeners: list[Listener] = []

    def connect(competition: Any = None, token: Any = None) -> Listener:
        data = {k: v for k, v in (("competition", competition), ("token", token)) if v is not None}
        listener = Listener(stack.realtime_url, data)
        listeners.append(listener)
        return listener.connect()

    yield connect
    for listener in listeners:
        listener.close()
    for listener in listeners:
        listener.assert_valid()


_log_marks = pytest.StashKey[dict[str, int]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """On a failure, attach what the stack's processes logged during the test."""
    report = yield
    if _stack is not None:
        if call.when == "setup":
            item.stash[_log_marks] = _stack.log_sizes()
        if report.failed:
            for name, tail in _stack.tails(item.stash.get(_log_marks, {})):
                report.sections.append((f"log of {name} during the test", tail))
    return report
