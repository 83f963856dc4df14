"""The stack under test, started as subprocesses the way production runs it, and their CPU.

A fresh PostgreSQL database and a Redis DB index of its own; gunicorn, one single-threaded
Celery consumer per queue, the sweeper and the realtime server(s). Every child gets
PR_SET_PDEATHSIG, so a benchmark killed hard leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import redis
import requests

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PORT_CEILING = 32767

log = logging.getLogger("bench")


def _die_with_parent() -> None:
    # Linux: deliver SIGTERM to the child when the benchmark dies, however it dies.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(preferred: int, skip: tuple[int, ...] = ()) -> int:
    """The first port from ``preferred`` up that binds, leaving out ``skip`` (ports another stack of
    this run has reserved but may not be listening on yet)."""
    for port in range(preferred, PORT_CEILING + 1):
        if port in skip:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port from {preferred} to {PORT_CEILING}")


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://").replace("postgres://", "postgresql://")


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(libpq_url(url))
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def with_redis_db(url: str, index: int) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        query = dict(urllib.parse.parse_qsl(parts.query))
        query["db"] = str(index)
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    return urllib.parse.urlunsplit(parts._replace(path=f"/{index}"))


def pick_redis_db(url: str, preferred: int | None, taken: tuple[int, ...] = ()) -> int:
    """A Redis DB index nobody uses: an empty one, from 15 down (or the one asked for)."""
    if preferred is not None:
        return preferred
    for index in range(15, 0, -1):
        if index in taken:
            continue
        client = redis.Redis.from_url(with_redis_db(url, index))
        try:
            if client.dbsize() == 0:
                return index
        finally:
            client.close()
    raise RuntimeError("no empty Redis DB index in 1..15; set BENCH_REDIS_DB")


@dataclass
class Services:
    """The database and Redis index of one benchmark run."""

    admin_url: str
    database: str
    database_url: str
    redis_url: str
    redis_db: int

    @classmethod
    def create(cls, env: Mapping[str, str], tag: str, taken: tuple[int, ...] = ()) -> Services:
        """``taken``: Redis DB indexes of this run's other stack (still empty while it starts)."""
        import psycopg

        admin_url = libpq_url(env.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
        database = f"quiz_bench_{tag}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        base_redis = env.get("REDIS_URL") or DEFAULT_REDIS_URL
        preferred = env.get("BENCH_REDIS_DB")
        index = pick_redis_db(base_redis, int(preferred) + len(taken) if preferred else None, taken)
        redis_url = with_redis_db(base_redis, index)
        redis.Redis.from_url(redis_url).flushdb()
        return cls(admin_url, database, with_database(admin_url, database), redis_url, index)

    def drop(self) -> None:
        import psycopg

        try:
            redis.Redis.from_url(self.redis_url).flushdb()
        except redis.RedisError:
            log.warning("could not flush Redis DB %d", self.redis_db, exc_info=True)
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        except psycopg.Error:
            log.warning("could not drop database %s", self.database, exc_info=True)


@dataclass
class Proc:
    name: str
    group: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str]
    env: dict[str, str]


@dataclass
class Stack:
    env: dict[str, str]
    log_dir: Path
    api_port: int
    realtime_ports: list[int]
    queues: list[str]
    procs: list[Proc] = field(default_factory=list)
    # Start stack processes through loadtests.launch, so their command lines do not name them.
    disguise: bool = True
    # The source tree the processes run from: this one, or another commit's worktree (--compare).
    tree: Path = REPO
    # What another tree said about itself (loadtests/probe.py); None for this tree.
    probed: dict[str, Any] | None = None

    @property
    def api(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port this stack may listen on (the second realtime server's only in fan-out)."""
        return (self.api_port, *self.realtime_ports)

    def realtime(self, index: int = 0) -> str:
        return f"http://{LOOPBACK}:{self.realtime_ports[index]}"

    @classmethod
    def prepare(cls, services: Services, log_dir: Path, base_env: Mapping[str, str], rate_limits: bool,
                tree: Path = REPO, skip_ports: tuple[int, ...] = ()) -> Stack:
        from models.kinds import all_queues
        from settings import Settings

        api_port = free_port(int(base_env.get("BENCH_API_PORT", "18000")), skip_ports)
        rt_ports = [free_port(api_port + 1, skip_ports)]
        rt_ports.append(free_port(rt_ports[0] + 1, skip_ports))
        # The balancer's port, for the scenarios that put the realtime processes behind HAProxy.
        rt_ports.append(free_port(rt_ports[1] + 1, skip_ports))
        env = {k: v for k, v in base_env.items()
               if not k.startswith("QUIZ_") and k not in ("ADMIN_TOKEN", "APP_DATABASE_URL")}
        env.update({
            "QUIZ_ENV": "production",
            "DATABASE_URL": services.database_url,
            "REDIS_URL": services.redis_url,
            "REDIS_PREFIX": f"bench-{services.database}",
            "ADMIN_TOKEN": secrets.token_hex(24),
            "SECRET_KEY": secrets.token_hex(32),
            # Thousands of simulated teams register from 127.0.0.1.
            "RATE_LIMIT_REGISTER_IP": "0",
            "API_PORT": str(api_port),
            "REALTIME_PORT": str(rt_ports[0]),
            "LOG_LEVEL": base_env.get("LOG_LEVEL", "WARNING"),
            "PYTHONUNBUFFERED": "1",
            # The tree's own modules first, whatever the caller's environment points at.
            "PYTHONPATH": str(tree),
        })
        if not rate_limits:
            # Every simulated team shares 127.0.0.1 and plays with no think time; see README.
            env.update({"RATE_LIMIT_IP": "0", "RATE_LIMIT_TEAM": "0", "WRONG_ANSWER_LIMIT": "0",
                        "RATE_LIMIT_READ_IP": "0", "RATE_LIMIT_READ_TEAM": "0"})
        log_dir.mkdir(parents=True, exist_ok=True)
        if tree == REPO:
            return cls(env, log_dir, api_port, rt_ports, all_queues(Settings.from_env(env)))
        probed = json.loads(run_in_tree(tree, env, "info", timeout=60).stdout)
        return cls(env, log_dir, api_port, rt_ports, probed["queues"], tree=tree, probed=probed)

    def settings(self) -> Any:
        from settings import Settings

        if self.probed is not None:
            return SimpleNamespace(**self.probed["settings"])
        return Settings.from_env(self.env)

    def spawn(self, name: str, group: str, argv: list[str], env: Mapping[str, str] | None = None) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        env = dict(env or self.env)
        run, child_env = argv, env
        if group in ("locust", "spectators"):
            # The load generator is this tree's, whichever tree the stack runs from.
            cwd = REPO
            child_env = dict(env, PYTHONPATH=str(REPO))
        else:
            cwd = self.tree
            if self.disguise and (self.tree / "loadtests" / "launch.py").exists():
                run = [sys.executable, "-m", "loadtests.launch", name]
                child_env = dict(env, BENCH_EXEC=json.dumps(argv))
        out = log_path.open("ab")
        popen = subprocess.Popen(run, cwd=cwd, env=child_env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        out.close()
        proc = Proc(name, group, popen, log_path, argv, env)
        self.procs.append(proc)
        return proc

    def dead(self) -> list[Proc]:
        return [p for p in self.procs if p.popen.poll() is not None]

    def revive(self) -> list[Proc]:
        """Start again whatever stack process has died (this machine is shared: see README)."""
        revived = []
        for proc in self.dead():
            log.warning("%s exited with %s; starting it again", proc.name, proc.popen.returncode)
            self.procs.remove(proc)
            revived.append(self.spawn(proc.name, proc.group, proc.argv, proc.env))
        if revived:
            self.wait_ready()
        return revived

    def migrate(self) -> None:
        if self.tree != REPO:
            done = subprocess.run([sys.executable, "-m", "models.migrate"], cwd=self.tree, env=self.env,
                                  timeout=300, capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"migrations of {self.tree} failed:\n{done.stderr[-3000:]}")
            return
        from models.migrate import upgrade

        upgrade(self.settings())

    def command(self, kind: str, queue: str | None = None, *extra: str, processes_n: int = 1) -> list[str]:
        """A command line from the one table of process kinds (of the stack's tree), run from this venv."""
        if self.probed is not None:
            commands = self.probed.get("commands") or LEGACY_COMMANDS
            argv = list(commands["consumers"][queue] if queue is not None and "consumers" in commands
                        else commands[kind])
            if queue is not None:
                argv = [a.replace("{queue}", queue) for a in argv]
        else:
            import processes

            settings = self.settings().with_overrides(realtime_processes=processes_n)
            if queue is not None:
                process = processes.consumer(settings, queue)
            else:
                (process,) = processes.expand(processes.kind(kind), settings)
            argv = process.argv
        program = sys.executable if argv[0] == "python" else str(BIN / argv[0])
        return [program, *argv[1:], *extra]

    def start(self) -> None:
        self.spawn("api", "api", self.command("api"))
        for queue in self.queues:
            # The last -l wins: per-job INFO lines would cost the consumers CPU under load.
            self.spawn(f"worker-{queue}", f"worker {queue}", self.command("consumer", queue, "-l", "WARNING"))
        self.spawn("sweeper", "sweeper", self.command("sweeper"))
        self.start_realtime(0)

    def start_realtime(self, index: int) -> Proc:
        env = dict(self.env, REALTIME_PORT=str(self.realtime_ports[index]))
        name = "realtime" if index == 0 else f"realtime-{index + 1}"
        return self.spawn(name, name, self.command("realtime"), env)

    @property
    def balancer(self) -> str:
        return f"http://{LOOPBACK}:{self.realtime_ports[-1]}"

    def start_balancer(self, count: int, clients: int = 0) -> list[Proc]:
        """HAProxy (the stack's balancer kind) in front of realtime processes 0 .. count - 1: as many
        HAProxy processes, sharing the port, as this machine's descriptor limit needs for ``clients``."""
        import processes

        backends = ",".join(f"{LOOPBACK}:{port}" for port in self.realtime_ports[:count])
        env = dict(self.env, REALTIME_PORT=str(self.realtime_ports[-1]), REALTIME_PROCESSES=str(count),
                   REALTIME_BACKENDS=backends)
        needed = max(1, -(-(clients + 100) // processes.balancer_maxconn()))
        procs = [self.spawn("balancer" if i == 0 else f"balancer-{i + 1}", "balancer",
                            self.command("balancer", processes_n=count), env) for i in range(needed)]
        if needed > 1:
            log.info("%d HAProxy processes share the balancer's port: one holds at most %d clients here",
                     needed, processes.balancer_maxconn())
        deadline = time.monotonic() + 60
        for i in range(count):
            # HAProxy answers a cookie naming a process it does not count as up yet from another one,
            # which sets its own cookie: wait until each process is in, so clients spread over all.
            self.poll(self.balancer + "/healthz", deadline,
                      lambda i=i: f"HAProxy did not count realtime process {i} as up in 60 s",
                      ok=lambda resp, i=i: resp.ok and resp.cookies.get("QUIZRT") in (None, f"r{i}"),
                      cookies={"QUIZRT": f"r{i}"})
        return procs

    def poll(self, url: str, deadline: float, failure: Callable[[], str],
             ok: Callable[[requests.Response], bool] = lambda resp: resp.status_code == 200, **get: Any) -> None:
        """GET ``url`` every 0.3 s until ``ok`` holds; raise ``failure()`` at ``deadline`` or if a process died."""
        while True:
            self.check_alive()
            try:
                if ok(requests.get(url, timeout=2, **get)):
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(failure())
            time.sleep(0.3)

    def stop_proc(self, proc: Proc, timeout: float = 10.0) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop_proc(proc)

    def check_alive(self) -> None:
        dead = self.dead()
        if dead:
            tails = "\n".join(f"--- {p.name} (exit {p.popen.returncode}):\n{tail(p.log_path)}" for p in dead)
            raise RuntimeError(f"stack process(es) exited: {', '.join(p.name for p in dead)}\n{tails}")

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        urls = [self.api + "/readyz"] + [self.realtime(i) + "/healthz" for i, _ in enumerate(self.realtime_ports)
                                         if any(p.name == ("realtime" if i == 0 else f"realtime-{i + 1}")
                                                for p in self.procs)]
        if any(p.name == "balancer" for p in self.procs):
            urls.append(self.balancer + "/healthz")
        for url in urls:
            self.poll(url, deadline, lambda url=url: f"{url} not ready in {timeout:.0f} s")
        if self.tree != REPO:
            # Another tree's Celery app may differ from ours: ask it with its own code.
            done = run_in_tree(self.tree, self.env, "ping", *self.queues, timeout=timeout + 30, check=False)
            self.check_alive()
            if done.returncode:
                raise RuntimeError(f"Celery workers of {self.tree} not ready: {done.stderr[-1000:]}")
            return
        from workers.celery_app import create_celery

        celery = create_celery(self.settings())
        expected = set(self.queues)
        try:
            while True:
                self.check_alive()
                replies = celery.control.ping(timeout=1.0) or []
                names = {name.split("@", 1)[0] for reply in replies for name in reply}
                if expected <= names:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Celery workers not ready in {timeout:.0f} s: missing {expected - names}")
        finally:
            celery.close()


# The command lines of a tree without processes.py: the ones 7ac502d's loadtests/stack.py (and
# its manage.py) ran, with ``{queue}`` filled per consumer.
LEGACY_COMMANDS: dict[str, list[str]] = {
    "api": ["gunicorn", "-c", "web/gunicorn_conf.py", "web.wsgi:app"],
    "consumer": ["celery", "-A", "workers.celery_app", "worker", "-Q", "{queue}", "-c", "1", "-P", "solo",
                 "-n", "{queue}@%h", "--without-gossip", "--without-mingle", "-l", "WARNING"],
    "sweeper": ["python", "-m", "workers.sweeper"],
    "realtime": ["python", "-m", "realtime"],
}


def run_in_tree(tree: Path, env: Mapping[str, str], *args: str, timeout: float,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run loadtests/probe.py (this tree's) against another tree's code."""
    source = (REPO / "loadtests" / "probe.py").read_text()
    return subprocess.run([sys.executable, "-c", source, *args], cwd=tree, env=dict(env, PYTHONPATH=str(tree)),
                          capture_output=True, text=True, timeout=timeout, check=check)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# The stack's process kinds, as CPU per job reports them; the load generator is none of them.
STACK_KINDS = ("api", "consumers", "sweeper", "realtime", "postgres", "redis")


def stack_kind(group: str) -> str | None:
    """The process kind a sampler group belongs to, or None for the load generator and the rest."""
    if group in ("api", "reference"):
        return "api"
    if group.startswith("worker "):
        return "consumers"
    if group.startswith("realtime"):
        return "realtime"
    if group in ("sweeper", "postgres", "redis"):
        return group
    return None


class CpuSampler:
    """CPU seconds of each process group, sampled once a second (children included)."""

    def __init__(self, database: str = "") -> None:
        # PostgreSQL backends serving this database count as ours; the rest of the server's
        # processes (other databases, background workers) as "postgres (other)".
        self.database = database
        self.groups: dict[str, list[psutil.Process]] = {}
        self.no_children: set[str] = set()
        self.samples: list[tuple[float, dict[str, float], float]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._dead: dict[str, float] = {}
        self._last: dict[tuple[str, int], float] = {}

    def add(self, group: str, pid: int, children: bool = True) -> None:
        if not children:
            self.no_children.add(group)
        try:
            process = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        with self._lock:
            self.groups.setdefault(group, []).append(process)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _cpu(self, process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        with self._lock:
            groups = {k: list(v) for k, v in self.groups.items()}
        external: dict[str, list[psutil.Process]] = {"postgres": [], "postgres (other)": [], "redis": []}
        for p in psutil.process_iter(["name", "cmdline"]):
            name = p.info["name"] or ""
            if name.startswith("postgres"):
                ours = self.database and self.database in " ".join(p.info["cmdline"] or [])
                external["postgres" if ours else "postgres (other)"].append(p)
            elif name.startswith("redis-server"):
                external["redis"].append(p)
        for group, roots in list(groups.items()) + list(external.items()):
            total = self._dead.get(group, 0.0)
            members: list[psutil.Process] = []
            for root in roots:
                members.append(root)
                if group not in external and group not in self.no_children:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        members.extend(root.children(recursive=True))
            for p in members:
                key = (group, p.pid)
                try:
                    cpu = self._cpu(p)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    # Keep what a process that went away had used, so the group's count never drops.
                    if key in self._last:
                        last = self._last.pop(key)
                        self._dead[group] = self._dead.get(group, 0.0) + last
                        total += last
                    continue
                self._last[key] = cpu
                total += cpu
            out[group] = total
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            cpu = psutil.cpu_times()
            busy = cpu.user + cpu.system + cpu.nice + cpu.irq + cpu.softirq + getattr(cpu, "steal", 0.0)
            self.samples.append((time.time(), self._read(), busy))
            self._stop.wait(1.0)

    def busy(self, seconds: float = 3.0) -> float:
        """How busy the machine is right now, in % of one core."""
        before = psutil.cpu_times()
        time.sleep(seconds)
        after = psutil.cpu_times()
        idle = (after.idle + after.iowait) - (before.idle + before.iowait)
        total = sum(after) - sum(before)
        return 100.0 * (os.cpu_count() or 1) * (1 - idle / total) if total else 0.0

    def cpu_seconds(self, start: float, end: float) -> tuple[float, float, dict[str, float]]:
        """CPU seconds each group used between the first and last samples inside ``start``..``end``:
        (first sample's time, last sample's time, seconds by group)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return start, end, {}
        (t0, a, _), (t1, b, _) = inside[0], inside[-1]
        return t0, t1, {g: b[g] - a.get(g, 0.0) for g in b if g in a or b[g] > 0}

    def usage(self, start: float, end: float) -> dict[str, float]:
        """Average CPU of each group between two wall times, in % of one core."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return {}
        (t0, a, busy0), (t1, b, busy1) = inside[0], inside[-1]
        span = t1 - t0
        out = {g: 100.0 * (b[g] - a.get(g, 0.0)) / span for g in b if g in a or b[g] > 0}
        out["machine"] = 100.0 * (busy1 - busy0) / span
        # Everything on the machine that is not this benchmark (other people's work, the kernel).
        mine = sum(v for g, v in out.items() if g not in ("machine", "postgres (other)"))
        out["other"] = max(0.0, out["machine"] - mine)
        return out
