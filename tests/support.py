"""Helpers for the integration tests: the running stack, an API client, database reads,
Socket.IO listeners and a way to fire requests at the same instant."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import requests
import socketio
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

import processes
from models.broker import Producer
from models.events import from_wire
from models.tables import Competition, Job, ScoreEvent, Team
from settings import Settings

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ADMIN_TOKEN = "test-admin-token"
FINISHED = ("succeeded", "failed")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {message}")
        time.sleep(interval)


def free_port(exclude: Iterable[int] = ()) -> int:
    """A free TCP port below the ephemeral range, so no outgoing connection takes it meanwhile."""
    taken = set(exclude)
    rng = uuid.uuid4().int
    for attempt in range(500):
        port = 18000 + (rng + attempt * 7919) % 12000
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port found")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value!r} has no time zone"
    return parsed


# -- processes ----------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    command: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        log = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self.popen = None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown code runs."""
        self.stop(signal.SIGKILL)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def tail(self, lines: int = 40, since: int = 0) -> str:
        """The last lines of the log, of what was written after byte ``since``."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    log_dir: Path
    processes: dict[str, Process] = field(default_factory=dict)
    retired: list[Process] = field(default_factory=list)  # stopped on purpose; their logs still count

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    @property
    def realtime_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.realtime_port}"

    def add(self, name: str, command: list[str], **env: str) -> Process:
        process = Process(name, command, self.log_dir / f"{name}.log")
        self.processes[name] = process
        process.start({**self.env, **env})
        return process

    def command(self, process: processes.Process, *extra: str) -> list[str]:
        """A process's command line from the one table (processes.KINDS), run from this venv."""
        if process.argv[0] == "python":
            program = sys.executable
        elif (BIN / process.argv[0]).exists():
            program = str(BIN / process.argv[0])
        else:
            program = shutil.which(process.argv[0], path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or ""
            assert program, f"{process.argv[0]} is not installed (needed by {process.name})"
        return [program, *process.argv[1:], *extra]

    def only(self, kind: str) -> processes.Process:
        (process,) = processes.expand(processes.kind(kind), self.settings)
        return process

    def start_api(self) -> None:
        # gunicorn's default control socket is one per user ($HOME/.gunicorn/gunicorn.ctl): a
        # second gunicorn takes it over from (and on exit deletes it under) a running dev stack.
        self.add("api", self.command(self.only("api"), "--control-socket", str(self.log_dir / "gunicorn.ctl")))

    def start_realtime(self) -> None:
        self.add("realtime", self.command(self.only("realtime")))

    def start_sweeper(self) -> None:
        self.add("sweeper", self.command(self.only("sweeper")))

    @contextlib.contextmanager
    def extra_realtime(self, name: str) -> Iterator[str]:
        """One more realtime server on the same Redis and database, for a test that may break it;
        yields its URL and stops it afterwards."""
        port = free_port(exclude=[self.settings.api_port, self.settings.realtime_port])
        process = self.add(name, self.command(self.only("realtime")), REALTIME_PORT=str(port))
        url = f"http://127.0.0.1:{port}"
        try:
            self.wait_http(url + "/healthz")
            yield url
        finally:
            process.stop()
            self.retired.append(self.processes.pop(name))

    @contextlib.contextmanager
    def balanced_realtime(self, count: int, balancers: int = 1) -> Iterator[str]:
        """``count`` more realtime servers behind ``balancers`` HAProxy processes sharing one port,
        as ``manage.py up --realtime N`` runs them (from the same table); yields the balancer's URL
        and stops them all afterwards."""
        port = free_port(exclude=[self.settings.api_port, self.settings.realtime_port])
        backends = free_port(exclude=[self.settings.api_port, self.settings.realtime_port, port])
        settings = self.settings.with_overrides(realtime_port=port, realtime_processes=count,
                                                realtime_backend_port=backends, balancer_processes=balancers)
        stack_env = {"REALTIME_PORT": str(port), "REALTIME_PROCESSES": str(count),
                     "REALTIME_BACKEND_PORT": str(backends), "BALANCER_PROCESSES": str(balancers)}
        started = []
        for kind in ("realtime", "balancer"):
            for process in processes.expand(processes.kind(kind), settings):
                started.append(self.add(f"balanced-{process.name}", self.command(process),
                                        **{**stack_env, **process.env}))
        try:
            for i in range(count):
                self.wait_http(f"http://127.0.0.1:{processes.backend_port(settings, i)}/healthz")
            self.wait_http(f"http://127.0.0.1:{port}/healthz")

            def balancer_sends_to(index: int) -> bool:
                # A cookie for a server HAProxy does not yet count as up is answered by another,
                # which sets its own cookie instead.
                resp = requests.get(f"http://127.0.0.1:{port}/healthz", cookies={"QUIZRT": f"r{index}"}, timeout=2)
                return resp.status_code == 200 and resp.cookies.get("QUIZRT") in (None, f"r{index}")

            for i in range(count):
                wait_until(lambda i=i: balancer_sends_to(i), 30, 0.2, f"HAProxy to count realtime-{i} as up")
            yield f"http://127.0.0.1:{port}"
        finally:
            for process in started:
                process.stop()
                self.retired.append(self.processes.pop(process.name))

    def worker_name(self, queue: str) -> str:
        return f"{queue}@{socket.gethostname()}"

    def start_worker(self, queue: str) -> None:
        # The last -l wins: a test run logs only what goes wrong.
        self.add(f"worker-{queue}", self.command(processes.consumer(self.settings, queue), "-l", "WARNING"))

    def worker(self, queue: str) -> Process:
        return self.processes[f"worker-{queue}"]

    def check_alive(self) -> None:
        dead = [p for p in self.processes.values() if not p.alive]
        if dead:
            details = "\n".join(f"--- {p.name} (exit status {p.popen.returncode if p.popen else None}) ---\n"
                                f"{p.tail()}" for p in dead)
            raise RuntimeError(f"stack process(es) exited: {[p.name for p in dead]}\n{details}")

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        def ready() -> bool:
            self.check_alive()
            try:
                return requests.get(url, timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout, interval=0.1, message=url)

    def wait_workers(self, queues: Sequence[str], timeout: float = 60.0) -> None:
        from workers.celery_app import create_celery

        celery = create_celery(self.settings)
        names = {self.worker_name(q) for q in queues}
        answered: set[str] = set()
        try:
            def all_answered() -> bool:
                self.check_alive()
                replies = celery.control.ping(destination=sorted(names - answered), timeout=0.5)
                for reply in replies or []:
                    answered.update(reply)
                return names <= answered

            wait_until(all_answered, timeout, interval=0.1, message=f"workers {sorted(names)}")
        finally:
            celery.close()

    def stop_all(self) -> None:
        # Everyone gets SIGTERM at once, so the slowest graceful shutdown bounds the wait.
        for process in self.processes.values():
            if process.alive and process.popen is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGTERM)
        for process in self.processes.values():
            process.stop()

    def log_sizes(self) -> dict[str, int]:
        return {p.name: p.log_size() for p in [*self.retired, *self.processes.values()]}

    def tails(self, since: dict[str, int], lines: int = 30) -> list[tuple[str, str]]:
        """What each process logged after ``since`` (from ``log_sizes``), if anything."""
        out = []
        for process in {p.name: p for p in [*self.retired, *self.processes.values()]}.values():
            name = process.name
            text = process.tail(lines, since.get(name, 0))
            if text.strip():
                out.append((name, text))
        return out


# -- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeamHandle:
    id: int
    name: str
    token: str
    registration_job: str


class ApiError(AssertionError):
    pass


class Api:
    """The HTTP API, one ``requests.Session`` per thread (sessions are not thread-safe)."""

    def __init__(self, base_url: str, admin_token: str = ADMIN_TOKEN) -> None:
        self.base_url = base_url
        self.admin_token = admin_token
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    @property
    def http(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def request(self, method: str, path: str, *, token: str | None = None, json: Any = None,
                data: bytes | str | None = None, headers: dict[str, str] | None = None,
                wait: int | None = None, params: dict[str, Any] | None = None) -> requests.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if wait is not None:
            sent["Prefer"] = f"wait={wait}"
        url = path if path.startswith("http") else self.base_url + path
        return self.http.request(method, url, json=json, data=data, headers=sent, params=params, timeout=60)

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request(method, path, token=self.admin_token, **kwargs)

    # organiser helpers

    def create_competition(self, slug: str | None = None, *, state: str = "running", **fields: Any) -> dict[str, Any]:
        slug = slug or unique("comp")
        body = {"slug": slug, "title": f"Test {slug}", **fields}
        resp = self.admin("POST", "/api/v1/competitions", json=body)
        expect(resp, 201)
        competition = resp.json()
        for step in ("open", "running"):
            if competition["state"] == state:
                break
            competition = self.set_state(slug, step)
        assert competition["state"] == state
        return competition

    def patch_competition(self, slug: str, **fields: Any) -> dict[str, Any]:
        resp = self.admin("PATCH", f"/api/v1/competitions/{slug}", json=fields)
        expect(resp, 200)
        return resp.json()

    def set_state(self, slug: str, state: str) -> dict[str, Any]:
        return self.patch_competition(slug, state=state)

    def add_questions(self, slug: str, questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        resp = self.admin("POST", f"/api/v1/competitions/{slug}/questions", json=questions)
        expect(resp, 201)
        return resp.json()["items"]

    # team helpers

    def post_registration(self, slug: str, name: str, *, wait: int | None = None, **fields: Any) -> requests.Response:
        return self.request("POST", f"/api/v1/competitions/{slug}/teams", json={"teamName": name, **fields}, wait=wait)

    def register(self, slug: str, name: str | None = None, **fields: Any) -> TeamHandle:
        name = name or unique("team")
        resp = self.post_registration(slug, name, wait=10, **fields)
        expect(resp, 200, 202)
        body = resp.json()
        token = body["teamToken"]
        job = body if resp.status_code == 200 else self.wait_job(body["jobId"], token)
        if job["status"] != "succeeded":
            raise ApiError(f"registration of {name!r} failed: {job}")
        return TeamHandle(job["result"]["teamId"], job["result"]["teamName"], token, job["jobId"])

    def job(self, job_id: str, token: str) -> requests.Response:
        return self.request("GET", f"/api/v1/jobs/{job_id}", token=token)

    def wait_job(self, job_id: str, token: str, timeout: float = 30.0) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            resp = self.job(job_id, token)
            expect(resp, 200)
            body = resp.json()
            return body if body["status"] in FINISHED else None

        return wait_until(finished, timeout, message=f"job {job_id}")

    def act(self, method: str, path: str, token: str, body: Any = None, *, wait: int | None = 10) -> dict[str, Any]:
        """A write that makes a job; returns the finished job."""
        resp = self.request(method, path, token=token, json=body, wait=wait)
        expect(resp, 200, 202)
        job = resp.json()
        if job["status"] not in FINISHED:
            job = self.wait_job(job["jobId"], token)
        return job

    def claim(self, slug: str, token: str, code: str, *, wait: int | None = 10) -> dict[str, Any]:
        return self.act("POST", f"/api/v1/competitions/{slug}/claims", token, {"questionId": code}, wait=wait)

    def submit(self, slug: str, token: str, code: str, answer: str, *, wait: int | None = 10) -> dict[str, Any]:
        return self.act("POST", f"/api/v1/competitions/{slug}/submissions", token,
                        {"questionId": code, "answer": answer}, wait=wait)

    def buy_mystery(self, slug: str, token: str, difficulty: str) -> dict[str, Any]:
        return self.act("POST", f"/api/v1/competitions/{slug}/mystery-boxes", token, {"difficulty": difficulty})

    def forfeit_mystery(self, slug: str, token: str) -> dict[str, Any]:
        return self.act("DELETE", f"/api/v1/competitions/{slug}/mystery-boxes/current", token)

    def leaderboard(self, slug: str, limit: int | None = None) -> list[dict[str, Any]]:
        resp = self.request("GET", f"/api/v1/competitions/{slug}/leaderboard",
                            params={"limit": limit} if limit else None)
        expect(resp, 200)
        return resp.json()["leaderboard"]

    def me(self, slug: str, token: str) -> dict[str, Any]:
        resp = self.request("GET", f"/api/v1/competitions/{slug}/teams/me", token=token)
        expect(resp, 200)
        return resp.json()


def expect(resp: requests.Response, *statuses: int) -> None:
    if resp.status_code not in statuses:
        raise ApiError(f"{resp.request.method} {resp.url} answered {resp.status_code}, expected {statuses}: "
                       f"{resp.text[:2000]}")


def ok_job(job: dict[str, Any]) -> dict[str, Any]:
    """The result of a job that must have succeeded."""
    assert job["status"] == "succeeded", job
    return job["result"]


def failed_with(job: dict[str, Any], code: str) -> None:
    assert job["status"] == "failed", job
    assert job["error"]["code"] == code, job
    assert job["error"]["message"], job
    assert "result" not in job, job


def questions(count: int, *, prefix: str = "Q", points: int | Callable[[int], int] = 100, kind: str = "board",
              difficulty: str = "MEDIUM", start: int = 1) -> list[dict[str, Any]]:
    """Question bodies: code ``{prefix}{i}``, answer ``answer {prefix}{i}``."""
    return [
        {
            "questionId": f"{prefix}{i}",
            "question": f"What is the answer to {prefix}{i}?",
            "answer": f"answer {prefix}{i}",
            "points": points(i) if callable(points) else points,
            "kind": kind,
            "difficulty": difficulty,
        }
        for i in range(start, start + count)
    ]


def answer_of(code: str) -> str:
    return f"answer {code}"


def concurrently(calls: Sequence[Callable[[], T]], api: Api | None = None, timeout: float = 120.0) -> list[T]:
    """Run every call in its own thread, all released at the same instant by a barrier."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait(timeout=60)
        return call()

    try:
        with ThreadPoolExecutor(len(calls)) as pool:
            futures = [pool.submit(run, call) for call in calls]
            return [f.result(timeout=timeout) for f in futures]
    finally:
        if api is not None:
            api.close()


def in_parallel(calls: Sequence[Callable[[], T]], api: Api | None = None, threads: int = 32) -> list[T]:
    """Run calls as fast as a pool of ``threads`` can (no barrier), results in order."""
    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda call: call(), calls))
    finally:
        if api is not None:
            api.close()


# -- database -------------------------------------------------------------------------------


class Db:
    """Reads of the test database, one short session per call."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)

    def session(self) -> Session:
        return self.sessions()

    def competition(self, slug: str) -> Competition:
        with self.sessions() as s:
            return s.scalars(select(Competition).where(Competition.slug == slug)).one()

    def count_jobs(self) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(Job)) or 0)

    def jobs(self, ids: Iterable[str]) -> dict[str, Job]:
        wanted = [uuid.UUID(i) for i in ids]
        with self.sessions() as s:
            return {str(j.id): j for j in s.scalars(select(Job).where(Job.id.in_(wanted)))}

    def wait_jobs(self, ids: Sequence[str], timeout: float = 90.0) -> dict[str, Job]:
        """Wait until every job is finished; returns the rows."""
        def done() -> dict[str, Job] | None:
            rows = self.jobs(ids)
            if len(rows) == len(set(ids)) and all(j.status in FINISHED for j in rows.values()):
                return rows
            return None

        try:
            return wait_until(done, timeout, interval=0.1, message=f"{len(ids)} job(s) to finish")
        except AssertionError as timeout_error:
            statuses = Counter(j.status for j in self.jobs(ids).values())
            raise AssertionError(f"{timeout_error}; their statuses: {dict(statuses)}") from None

    def teams(self, competition_id: int) -> list[Team]:
        with self.sessions() as s:
            return list(s.scalars(select(Team).where(Team.competition_id == competition_id).order_by(Team.id)))

    def team(self, team_id: int) -> Team:
        with self.sessions() as s:
            team = s.get(Team, team_id)
            assert team is not None
            return team

    def score_events(self, competition_id: int) -> list[ScoreEvent]:
        with self.sessions() as s:
            return list(s.scalars(
                select(ScoreEvent).where(ScoreEvent.competition_id == competition_id).order_by(ScoreEvent.id)
            ))

    def scalar(self, statement: Any) -> Any:
        with self.sessions() as s:
            return s.scalar(statement)

    def all(self, statement: Any) -> list[Any]:
        with self.sessions() as s:
            return list(s.execute(statement).all())

    def lock_waiters(self) -> int:
        """Sessions of the test database waiting for a lock right now."""
        return int(self.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock'"
        ).bindparams(db=self.engine.url.database)) or 0)

    @contextlib.contextmanager
    def row_locked(self, team_id: int) -> Iterator[None]:
        """Hold a team row (FOR NO KEY UPDATE: workers' FOR UPDATE waits, the API's inserts do not)."""
        with self.engine.connect() as conn, conn.begin() as transaction:
            conn.execute(select(Team.id).where(Team.id == team_id).with_for_update(key_share=True))
            try:
                yield
            finally:
                transaction.rollback()

    def assert_ledger(self, competition_id: int) -> None:
        """Every team's points are its starting points plus the sum of its ledger."""
        with self.sessions() as s:
            rows = s.execute(
                select(Team.name, Team.points, Team.starting_points,
                       func.coalesce(func.sum(ScoreEvent.delta), 0).label("total"))
                .outerjoin(ScoreEvent, ScoreEvent.team_id == Team.id)
                .where(Team.competition_id == competition_id)
                .group_by(Team.id)
            ).all()
        wrong = [r for r in rows if r.points != r.starting_points + r.total]
        assert not wrong, f"points disagree with the ledger: {wrong}"

    def standings(self, competition_id: int, limit: int) -> list[dict[str, Any]]:
        """The leaderboard by the rule: points descending, ties to who reached the score first."""
        with self.sessions() as s:
            rows = s.execute(
                select(Team.name, Team.points)
                .where(Team.competition_id == competition_id, Team.disqualified.is_(False))
                .order_by(Team.points.desc(), Team.points_at, Team.id)
                .limit(limit)
            ).all()
        return [{"rank": i + 1, "teamName": r.name, "points": r.points} for i, r in enumerate(rows)]


# -- Socket.IO ------------------------------------------------------------------------------


class Listener:
    """A python-socketio client that records every event it receives, in order.

    Each event is also decoded with the contract's Struct of its name (``models.events``);
    what does not match exactly is kept in ``invalid``, and the ``listen`` fixture fails the test.
    """

    def __init__(self, url: str, auth: dict[str, Any]) -> None:
        self.url = url
        self.auth = auth
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.received_at: list[float] = []  # time.monotonic() of each event
        self.invalid: list[str] = []
        self._cond = threading.Condition()
        self.client = socketio.Client(reconnection=False)
        self.client.on("*", self._record)

    def _record(self, event: str, data: Any = None) -> None:
        problem = None
        try:
            if from_wire(event, data).seq <= 0:
                problem = "seq is not positive"
        except msgspec.ValidationError as exc:
            problem = str(exc)
        with self._cond:
            if problem is not None:
                self.invalid.append(f"{event}: {problem}: {data!r:.300}")
            self.events.append((event, data))
            self.received_at.append(time.monotonic())
            self._cond.notify_all()

    def assert_valid(self) -> None:
        """Every event received so far matched its type in the contract."""
        assert not self.invalid, f"{len(self.invalid)} event(s) off the contract: {self.invalid[:3]}"

    def connect(self) -> Listener:
        self.client.connect(self.url, auth=self.auth, transports=["websocket"], wait_timeout=10)
        return self

    def close(self) -> None:
        if self.client.connected:
            self.client.disconnect()

    def of(self, event: str) -> list[dict[str, Any]]:
        with self._cond:
            return [data for name, data in self.events if name == event]

    def wait_for(self, predicate: Callable[[list[tuple[str, dict[str, Any]]]], T], timeout: float = 15.0,
                 message: str = "events") -> T:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self.events))
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [name for name, _ in self.events]
                    raise AssertionError(f"timed out waiting for {message}; received {seen}")
                self._cond.wait(remaining)

    def wait_event(self, event: str, match: Callable[[dict[str, Any]], bool] = lambda _: True,
                   timeout: float = 15.0) -> dict[str, Any]:
        def found(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
            return next((data for name, data in events if name == event and match(data)), None)

        return self.wait_for(found, timeout, message=event)


# -- bulk set-up --------------------------------------------------------------------------


def register_teams(api: Api, db: Db, slug: str, names: Sequence[str], threads: int = 32) -> list[TeamHandle]:
    """Register many teams quickly (202s, then one wait on the job rows); all must succeed."""
    responses = in_parallel([lambda name=name: api.post_registration(slug, name) for name in names], api, threads)
    for resp in responses:
        expect(resp, 202, 200)
    bodies = [r.json() for r in responses]
    rows = db.wait_jobs([b["jobId"] for b in bodies])
    teams = []
    for body in bodies:
        job = rows[body["jobId"]]
        assert job.status == "succeeded", (job.status, job.error)
        assert job.result is not None
        teams.append(TeamHandle(job.result["teamId"], job.result["teamName"], body["teamToken"], body["jobId"]))
    return teams


def post_all(api: Api, method: str, requests_: Sequence[tuple[str, str, Any]], threads: int = 32,
             accepted: tuple[int, ...] = (202, 200)) -> list[dict[str, Any]]:
    """Fire writes ``(path, token, body)`` as fast as possible; returns their 202 bodies."""
    responses = in_parallel(
        [lambda p=path, t=token, b=body: api.request(method, p, token=t, json=b) for path, token, body in requests_],
        api, threads,
    )
    for resp in responses:
        expect(resp, *accepted)
    return [r.json() for r in responses]


# -- jobs behind the API's back -------------------------------------------------------------


def insert_job(db: Db, *, competition_id: int, kind: str, queue: str, token: str, payload: dict[str, Any],
               team_id: int | None, age_seconds: float = 0) -> str:
    """A job row as the API writes it, but no message: as if the enqueue was lost."""
    job_id = uuid.uuid4()
    with db.sessions.begin() as session:
        session.add(Job(id=job_id, competition_id=competition_id, kind=kind, queue=queue, team_id=team_id,
                        owner_hash=token_digest(token), payload=payload))
        if age_seconds:
            session.flush()
            session.execute(text("UPDATE jobs SET created_at = now() - make_interval(secs => :s) WHERE id = :id"),
                            {"s": age_seconds, "id": job_id})
    return str(job_id)


def send(sender: Producer, job_id: str, kind: str, queue: str) -> str:
    """Deliver a job's message (again), as the API or the sweeper does; returns the task id (the job's)."""
    sender.send(job_id, kind, queue)
    return job_id
