"""Faults under load, against the real launcher (``manage.py up``) on servers of the test's own.

Each test plays a competition with a dozen teams claiming and answering as fast as they can,
breaks one thing in the middle (DESIGN.md, "When something fails"), lets the load run on, and
then checks what must never be lost:

- every job reaches a final state once, and with no ``internal_error``;
- points = starting points + ledger, one claim per question, nothing stuck, the Redis cache
  equal to PostgreSQL (``manage.py check``);
- the REST leaderboard equals the database;
- spectators end on the final standings (through a fresh snapshot if an event was lost);
- while a dependency was down the API answered 503 with Retry-After, and never a 500.

PostgreSQL and Redis here are embedded servers started for this module alone (the launcher's
own classes), on loopback ports of their own, so restarting them or throwing Redis's data away
touches nothing else on the machine. Every wait is bounded; the module tears everything down.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from sqlalchemy import Engine, create_engine, select, text

import manage
from models.tables import Competition, Job
from settings import Settings
from tests.support import (
    ADMIN_TOKEN,
    REPO,
    Api,
    Listener,
    TeamHandle,
    answer_of,
    expect,
    free_port,
    questions,
    unique,
    wait_until,
)

TEAMS = 12
CODES_PER_TEAM = 60
BANNER = "The quiz stack is up."


@dataclass
class Servers:
    postgres: manage.Postgres
    redis: manage.Redis


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    # Not under pytest's temporary folder: another pytest run resets that to mode 0700, and
    # PostgreSQL runs as an unprivileged account when we are root.
    root = Path(tempfile.mkdtemp(prefix="quiz-fault-servers-"))
    postgres, redis_server = manage.Postgres(root, durable=False), manage.Redis(root, durable=False)
    try:
        postgres.start()
        postgres.ensure_database("quiz")
        redis_server.start()
        yield Servers(postgres, redis_server)
    finally:
        redis_server.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


class Launcher:
    """``python3 manage.py up`` as a user runs it, its output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self._from = 0

    def start(self) -> None:
        self._from = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen([sys.executable, str(REPO / "manage.py"), "up"], cwd=REPO, env=self.env,
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        wait_until(lambda: self._alive() and BANNER in self.output(), 120, 0.2, "the launcher's banner")

    def _alive(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise AssertionError(f"manage.py up exited with {self.popen.returncode}:\n{self.output()[-3000:]}")
        return True

    def output(self) -> str:
        """What the launcher printed since its last start."""
        with self.log_path.open("rb") as log:
            log.seek(self._from)
            return log.read().decode(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
            raise

    def process(self, *words: str) -> psutil.Process:
        """The running descendant whose command line contains ``words`` in this order."""
        assert self.popen is not None

        def find() -> psutil.Process | None:
            for child in psutil.Process(self.popen.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    cmdline = [os.path.basename(part) for part in child.cmdline()]
                    if any(cmdline[i:i + len(words)] == list(words) for i in range(len(cmdline))):
                        return child
            return None

        return wait_until(find, 60, 0.2, f"a process running {' '.join(words)}")


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    launcher: Launcher
    engine: Engine
    api: Api
    failpoints: Path

    @property
    def realtime_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.realtime_port}"

    def check(self, slug: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "models.check", slug, "--stuck-after", "60"], cwd=REPO,
                              env=self.env, capture_output=True, text=True, timeout=60, check=False)

    def lock_waiters(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'quiz' AND wait_event_type = 'Lock'")) or 0)


@pytest.fixture(scope="module")
def stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("fault-stack")
    failpoints = work / "failpoints"
    failpoints.mkdir()
    api_port = free_port()
    realtime_port = free_port(exclude=[api_port])
    flower_port = free_port(exclude=[api_port, realtime_port])
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QUIZ_", "PYTEST_"))}
    env = {
        **base,
        "DATABASE_URL": servers.postgres.url("quiz"),
        "REDIS_URL": servers.redis.url(),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "QUIZ_ENV": "test",
        "API_PORT": str(api_port),
        "REALTIME_PORT": str(realtime_port),
        "FLOWER_PORT": str(flower_port),
        "API_WORKERS": "1",
        "API_THREADS": "24",
        "BOARD_QUEUES": "2",
        "DB_POOL_SIZE": "5",
        # Lost messages are re-sent after 3 s, and the cache rebuilt every second.
        "SWEEP_AFTER": "3",
        "SWEEP_INTERVAL": "1",
        "RATE_LIMIT_IP": "1000000",
        "RATE_LIMIT_TEAM": "1000000",
        "FAILPOINTS_DIR": str(failpoints),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    settings = Settings.from_env(env)
    launcher = Launcher(env, work / "launcher.log")
    engine = create_engine(settings.database_url, pool_size=2, max_overflow=2, pool_pre_ping=True)
    api = Api(f"http://127.0.0.1:{api_port}")
    try:
        launcher.start()
        yield Stack(settings, env, launcher, engine, api, failpoints)
    finally:
        api.close()
        engine.dispose()
        if launcher.popen is not None and launcher.popen.poll() is None:
            launcher.stop()
        print(f"\nlauncher output: {launcher.log_path}")


# -- the load ------------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    without_retry_after: int = 0
    server_errors: list[str] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> final status
    lock: threading.Lock = field(default_factory=threading.Lock)


class Player(threading.Thread):
    """One team claiming and answering its own questions, retrying through any outage.

    A write is retried with the same Idempotency-Key until the API accepts it (so a write the
    API committed before dying is found again, not made twice), then followed to its final state.
    """

    def __init__(self, api_url: str, slug: str, team: TeamHandle, codes: list[str], stop: threading.Event,
                 tally: Tally) -> None:
        super().__init__(daemon=True)
        self.base = f"{api_url}/api/v1"
        self.slug, self.team, self.codes, self.stop, self.tally = slug, team, codes, stop, tally
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {team.token}"
        self.give_up = 0.0

    def run(self) -> None:
        try:
            for code in self.codes:
                if self.stop.is_set():
                    return
                for path, body in (("claims", {"questionId": code}),
                                   ("submissions", {"questionId": code, "answer": answer_of(code)})):
                    self._write(f"{self.base}/competitions/{self.slug}/{path}", body)
        finally:
            self.http.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response | None:
        try:
            resp = self.http.request(method, url, timeout=15, **kwargs)
        except requests.RequestException:
            time.sleep(0.3)  # the API is restarting
            return None
        with self.tally.lock:
            self.tally.statuses[resp.status_code] += 1
            if resp.status_code == 503 and not resp.headers.get("Retry-After"):
                self.tally.without_retry_after += 1
            if resp.status_code >= 500 and resp.status_code != 503:
                self.tally.server_errors.append(f"{method} {url}: {resp.status_code} {resp.text[:300]}")
        if resp.status_code in (429, 503):
            time.sleep(0.3)
        return resp

    def _write(self, url: str, body: dict[str, Any]) -> None:
        key = str(uuid.uuid4())
        deadline = time.monotonic() + 180
        job: dict[str, Any] | None = None
        while job is None and time.monotonic() < deadline:
            resp = self._request("POST", url, json=body, headers={"Idempotency-Key": key, "Prefer": "wait=5"})
            if resp is not None and resp.status_code in (200, 202):
                job = resp.json()
        assert job is not None, f"{url} was never accepted"
        while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            resp = self._request("GET", f"{self.base}/jobs/{job['jobId']}")
            if resp is not None and resp.status_code == 200:
                job = resp.json()
        with self.tally.lock:
            self.tally.jobs[job["jobId"]] = job["status"]


@dataclass
class Game:
    slug: str
    competition_id: int
    players: list[Player]
    tally: Tally
    stop: threading.Event
    spectator: Listener


@contextlib.contextmanager
def game(stack: Stack) -> Iterator[Game]:
    api = stack.api
    slug = api.create_competition(maxOpenClaims=1, leaderboardSize=10)["slug"]
    bank = questions(TEAMS * CODES_PER_TEAM, points=lambda i: 10 + i % 7 * 10)
    for start in range(0, len(bank), 200):
        api.add_questions(slug, bank[start:start + 200])
    teams = [api.register(slug, unique("fault")) for _ in range(TEAMS)]
    with stack.engine.connect() as conn:
        competition_id = conn.scalar(select(Competition.id).where(Competition.slug == slug))
    spectator = Listener(stack.realtime_url, {"competition": slug}).connect()
    tally, stop = Tally(), threading.Event()
    codes = [q["questionId"] for q in bank]
    players = [Player(api.base_url, slug, team, codes[i::TEAMS], stop, tally) for i, team in enumerate(teams)]
    for player in players:
        player.start()
    g = Game(slug, competition_id, players, tally, stop, spectator)
    try:
        wait_until(lambda: len(tally.jobs) >= 2 * TEAMS, 60, 0.2, "the load to get going")
        yield g
    finally:
        stop.set()
        for player in players:
            player.join(200)
        spectator.close()


def recovered(stack: Stack, g: Game, what: str) -> float:
    """Seconds from the end of a fault until every job accepted up to then has finished.

    Printed (``-s``) for the README's "When something fails" table.
    """
    ended = datetime.now(UTC)
    started = time.monotonic()

    def cleared() -> bool:
        with stack.engine.connect() as conn:
            return not conn.scalar(select(Job.id).where(
                Job.competition_id == g.competition_id, Job.status.in_(("queued", "running")),
                Job.created_at <= ended).limit(1))

    wait_until(cleared, 120, 0.1, f"the jobs accepted before the end of the fault ({what})")
    took = time.monotonic() - started
    print(f"\nrecovery after {what}: {took:.1f} s", flush=True)
    return took


def settle(g: Game, seconds: float = 4.0) -> None:
    """Let the load run on after a fault, then stop it and let every player finish its write."""
    before = len(g.tally.jobs)
    wait_until(lambda: len(g.tally.jobs) >= before + TEAMS, 90, 0.2, "the load to go on after the fault")
    time.sleep(seconds)
    g.stop.set()
    for player in g.players:
        player.join(200)
    assert not any(p.is_alive() for p in g.players), "a player never got its job finished"


def verify(stack: Stack, g: Game, extra_jobs: int = 0) -> None:
    # Every job of the competition finishes, once, and none with an internal error. Each team
    # plays questions of its own, so every one of them must succeed.
    def finished() -> list[Any] | None:
        with stack.engine.connect() as conn:
            rows = conn.execute(select(Job.id, Job.kind, Job.status, Job.error)
                                .where(Job.competition_id == g.competition_id)).all()
        return rows if all(r.status in ("succeeded", "failed") for r in rows) else None

    rows = wait_until(finished, 120, 0.5, "every job of the competition to finish")
    unsuccessful = [(r.kind, r.status, r.error) for r in rows if r.status != "succeeded"]
    assert not unsuccessful, unsuccessful
    seen = {str(r.id) for r in rows}
    assert set(g.tally.jobs) <= seen
    assert set(g.tally.jobs.values()) == {"succeeded"}
    assert len(rows) == TEAMS + len(g.tally.jobs) + extra_jobs, "a job was made twice, or one nobody sent"

    assert not g.tally.server_errors, g.tally.server_errors[:5]
    assert g.tally.without_retry_after == 0

    # Ledger, uniqueness, nothing stuck, and the cache equal to PostgreSQL (the sweeper may need
    # a period to rebuild it).
    results: list[subprocess.CompletedProcess[str]] = []

    def checked() -> bool:
        results.append(stack.check(g.slug))
        return results[-1].returncode == 0

    with contextlib.suppress(AssertionError):
        wait_until(checked, 20, 1.0, "manage.py check")
    assert results[-1].returncode == 0, results[-1].stdout + results[-1].stderr

    with stack.engine.connect() as conn:
        truth = [{"rank": i + 1, "teamName": r.name, "points": r.points} for i, r in enumerate(conn.execute(text(
            "SELECT name, points FROM teams WHERE competition_id = :c AND NOT disqualified "
            "ORDER BY points DESC, points_at, id LIMIT 10"), {"c": g.competition_id}))]
    assert stack.api.leaderboard(g.slug, 10) == truth

    def on_final(events: list[tuple[str, dict[str, Any]]]) -> bool:
        boards = [data["leaderboard"] for name, data in events if name == "leaderboard_update"]
        return bool(boards) and boards[-1] == truth

    try:
        g.spectator.wait_for(on_final, 10, "the final standings")
    except AssertionError:
        # The last event was lost with the fault: a fresh connection's snapshot must have them.
        fresh = Listener(stack.realtime_url, {"competition": g.slug}).connect()
        try:
            fresh.wait_for(on_final, 15, "the final standings in a fresh snapshot")
        finally:
            fresh.close()


def _ids(stack: Stack, statement: Any) -> list[str]:
    with stack.engine.connect() as conn:
        return [str(v) for v in conn.scalars(statement)]


def probe_503(stack: Stack, *requests_: tuple[str, str]) -> None:
    """While a dependency is down, each request is answered 503 with Retry-After (never a 500)."""
    for method, path in requests_:
        # A tuple, as a Response with a 5xx status is falsy.
        def unavailable(method: str = method, path: str = path) -> tuple[requests.Response] | None:
            try:
                resp = stack.api.request(method, path, json={"teamName": "probe"} if method == "POST" else None)
            except requests.RequestException:
                return None
            assert resp.status_code < 500 or resp.status_code == 503, (resp.status_code, resp.text[:300])
            return (resp,) if resp.status_code == 503 else None

        (resp,) = wait_until(unavailable, 20, 0.2, f"{method} {path} to answer 503")
        assert resp.headers.get("Retry-After"), resp.headers
        assert resp.headers["Content-Type"].startswith("application/problem+json")


# -- the faults ----------------------------------------------------------------------------


def test_a_consumer_killed_with_its_batch_uncommitted(stack: Stack) -> None:
    with game(stack) as g:
        victim = g.players[0].team
        with stack.engine.connect() as conn, conn.begin() as transaction:
            # The team's row held: the consumer that takes the team's next job blocks inside its
            # batch, transaction open, before anything is committed.
            conn.execute(text("SELECT id FROM teams WHERE id = :t FOR NO KEY UPDATE"), {"t": victim.id})
            wait_until(lambda: stack.lock_waiters() >= 1, 30, 0.1, "a consumer to block on the team")
            (queue,) = _ids(stack, select(Job.queue).where(Job.team_id == victim.id, Job.status == "queued"))
            stack.launcher.process("-Q", queue).kill()
            transaction.rollback()
        recovered(stack, g, "a consumer killed mid-batch")
        settle(g)
        verify(stack, g)
    assert f"{queue.replace('.', '-')} exited with -9; restarted" in stack.launcher.output()


def test_a_consumer_killed_after_its_commit_before_its_ack_and_announcements(stack: Stack) -> None:
    queue = "board.0"
    point = stack.failpoints / f"consumer-after-commit.{queue}"
    with game(stack) as g:
        point.touch()
        try:
            wait_until(point.with_name(point.name + ".hit").exists, 30, 0.1, "the consumer to commit a batch")
            consumer = stack.launcher.process("-Q", queue)
            # Its batch is committed: the jobs are finished in PostgreSQL, unannounced.
            done = _ids(stack, select(Job.id).where(Job.queue == queue, Job.status == "succeeded",
                                                   Job.competition_id == g.competition_id))
            assert done
            consumer.kill()
        finally:
            point.unlink()
        recovered(stack, g, "a consumer killed after its commit")
        settle(g)
        verify(stack, g)
    assert "board-0 exited with -9; restarted" in stack.launcher.output()


def test_redis_lost_with_its_data(stack: Stack, servers: Servers) -> None:
    with game(stack) as g:
        servers.redis.halt()
        try:
            # Writes are still accepted (the job is a row in PostgreSQL; the sweeper sends its
            # message once the broker is back): only what needs Redis is unavailable.
            probe_503(stack, ("GET", "/readyz"))
            time.sleep(1)
        finally:
            servers.redis.resume()  # empty: the broker's queues, flags and caches are gone
        recovered(stack, g, "Redis lost with its data")
        wait_until(lambda: _ready(stack), 60, 0.5, "the API to be ready again")
        settle(g)
        verify(stack, g)


def test_a_fast_postgresql_restart(stack: Stack, servers: Servers) -> None:
    with game(stack) as g:
        servers.postgres.halt()  # SIGINT: PostgreSQL's "fast" shutdown
        try:
            probe_503(stack, ("POST", f"/api/v1/competitions/{g.slug}/teams"), ("GET", "/readyz"))
            time.sleep(1)
        finally:
            servers.postgres.resume()
        recovered(stack, g, "a PostgreSQL restart")
        wait_until(lambda: _ready(stack), 60, 0.5, "the API to be ready again")
        settle(g)
        verify(stack, g)


def test_the_api_killed_between_its_commit_and_its_enqueue(stack: Stack) -> None:
    point = stack.failpoints / "api-after-commit"
    names = [unique("stranded") for _ in range(3)]
    with game(stack) as g:
        point.touch()
        try:
            # Registrations too: nothing else goes to their queue during the game, so only the
            # sweeper can deliver them once the API that committed them is gone.
            posts = [threading.Thread(target=_post_quietly, args=(stack, g.slug, name), daemon=True)
                     for name in names]
            for post in posts:
                post.start()
            wait_until(lambda: _count(stack, select(Job.id).where(Job.kind == "register",
                                                                  Job.competition_id == g.competition_id)) == TEAMS + 3,
                       30, 0.1, "the registrations to be committed")
            api = stack.launcher.process("gunicorn", "-c")
            os.killpg(api.pid, signal.SIGKILL)  # the master and its workers: an OOM kill of the lot
        finally:
            point.unlink()
        recovered(stack, g, "the API killed between commit and enqueue")
        settle(g)
        verify(stack, g, extra_jobs=len(names))
    with stack.engine.connect() as conn:
        registered = conn.scalars(text("SELECT name FROM teams WHERE name = ANY(:n)"), {"n": names}).all()
    assert sorted(registered) == sorted(names)
    output = stack.launcher.output()
    assert "api exited with -9; restarted" in output
    assert "re-sent" in output  # by the sweeper, a process of the stack


def _post_quietly(stack: Stack, slug: str, name: str) -> None:
    with contextlib.suppress(requests.RequestException):
        requests.post(f"{stack.api.base_url}/api/v1/competitions/{slug}/teams", json={"teamName": name}, timeout=60)


def _count(stack: Stack, statement: Any) -> int:
    return len(_ids(stack, statement))


def test_the_whole_stack_stopped_and_started_again(stack: Stack) -> None:
    with game(stack) as g:
        assert stack.launcher.stop() == 0
        stack.launcher.start()
        recovered(stack, g, "the stack stopped and started")
        settle(g)
        verify(stack, g)


def _ready(stack: Stack) -> bool:
    try:
        return requests.get(f"{stack.api.base_url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_every_fault_test_left_the_launcher_running(stack: Stack) -> None:
    assert stack.launcher.popen is not None and stack.launcher.popen.poll() is None
    expect(requests.get(f"{stack.api.base_url}/healthz", timeout=5), 200)
