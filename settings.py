"""The one place that reads the environment.

Every process builds a ``Settings`` once at start-up (``Settings.from_env()``) and passes it
down; no other module touches ``os.environ``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105 - the documented development default
# Signs registration tokens outside production only; production must set its own SECRET_KEY.
DEV_SECRET_KEY = "dev-secret-key-not-for-production"  # noqa: S105
MIN_SECRET_KEY = 32
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class SettingsError(ValueError):
    """The environment describes a configuration the system refuses to run with."""


def _normalise_db_url(url: str) -> str:
    # Operators paste libpq URLs; SQLAlchemy needs to be told to use psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc
    if not math.isfinite(value) or value < minimum:
        raise SettingsError(f"{name} must be a finite number >= {minimum}, got {raw!r}")
    return value


def _is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def weak_secret(value: str, minimum: int) -> str | None:
    """Why a secret is too weak to guard production, or None: long enough and not a pattern."""
    if len(value) < minimum:
        return f"is shorter than {minimum} characters"
    if len(set(value)) < 8:
        return "repeats too few different characters"
    lowered = value.lower()
    if any(word in lowered for word in ("changeme", "change-me", "secret-key", "dev-", "example", "password")):
        return "looks like a placeholder"
    return None


# Where a setting applies, for docs/configuration.md.
ALL = "every process"
API = "api"
WORKERS = "consumers"
SWEEPER = "sweeper"
REALTIME = "realtime"
FLOWER = "flower"
LAUNCHER = "manage.py"


def cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup quota (a container's
    ``cpus``) rounded up."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as quota_file:
            quota, period = quota_file.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def setting(default: Any, doc: str, applies: str, *, env: str | None = None, shown: str | None = None) -> Any:
    """A Settings field with what docs/configuration.md says about it.

    ``env`` is the variable's name when it is not the field's name in capitals; ``shown`` replaces
    the default in the document when the default alone would mislead.
    """
    return field(default=default, metadata={"doc": doc, "applies": applies, "env": env, "shown": shown})


@dataclass(frozen=True)
class Settings:
    environment: str = setting(
        "development", "`production` turns on the production checks: strong `ADMIN_TOKEN` and `SECRET_KEY` are "
        "required.", ALL, env="QUIZ_ENV")
    database_url: str = setting(
        "postgresql+psycopg://postgres@127.0.0.1:5432/quiz",
        "PostgreSQL, e.g. `postgresql://user:password@host:5432/quiz`; `postgres://` and `postgresql://` "
        "are taken to mean psycopg 3. The migrations run as this role (the owner). Unset, `manage.py` starts "
        "an embedded server and sets it.",
        f"{API}, {WORKERS}, {SWEEPER}, {REALTIME}, migrate, seed", shown="embedded server (`manage.py`)")
    # What the app processes (API, workers, sweeper, realtime) connect as: a role that owns no
    # table, so it cannot disable the audit log's append-only trigger. Migrations use
    # database_url (the owner), and create this role. Empty: the app uses database_url too.
    app_database_url: str = setting(
        "", "The role the app processes connect as, one that owns no table (so it cannot switch off the audit "
        "log's trigger); the migrations create it and grant it the app's privileges. Empty: `DATABASE_URL`.",
        f"{API}, {WORKERS}, {SWEEPER}, {REALTIME}, migrate", shown="`DATABASE_URL`")
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis: the Celery broker, live events, rate limits and caches, e.g. `redis://:password@host:6379/0`. "
        "Unset, `manage.py` starts an embedded server and sets it.",
        f"{API}, {WORKERS}, {SWEEPER}, {REALTIME}, {FLOWER}", shown="embedded server (`manage.py`)")
    admin_token: str = setting(
        DEV_ADMIN_TOKEN, "Organisers' bearer token, for the API and Socket.IO. Required (16+ characters) in production "
        "and whenever the API or realtime listens beyond loopback.", f"{API}, {REALTIME}")
    board_queues: int = setting(
        2, "Number of `board.N` queues (claims and answers, routed by question); one consumer each. About one "
        "per core the consumers can have: on a 2-core machine 2 carried 1.26x the teams/s of 4 on register-and-"
        "claim (`loadtests/results/20261202-073000-board-queues/`), as more queues mean smaller batches.",
        f"{API}, {WORKERS}, {SWEEPER}, {LAUNCHER}")
    competition_queues: int = setting(
        1, "Number of `competition.N` queues (a competition's mystery boxes and organiser jobs, routed by "
        "competition); one consumer each. The old name `MYSTERY_SHARDS` is still read when this is unset.",
        f"{API}, {WORKERS}, {SWEEPER}, {LAUNCHER}")
    api_host: str = setting("127.0.0.1", "Address the API binds to; Flower binds to the same one under `manage.py`.",
                            f"{API}, {LAUNCHER}")
    api_port: int = setting(8000, "The API's port.", f"{API}, {LAUNCHER}")
    # gevent: a request waiting on ``Prefer: wait`` holds a greenlet, not a thread, and the
    # process does not hand the GIL around among many busy threads (loadtests/README.md, "API
    # workers and threads"). gthread stays available for a deployment that cannot use gevent.
    api_worker_class: str = setting(
        "gevent", "gunicorn worker class of the API: `gevent` (each request a greenlet; up to "
        "`API_WORKER_CONNECTIONS` per process) or `gthread` (`API_THREADS` threads per process).", API)
    # A gevent worker uses at most one core, and on one machine the API shares the cores with the
    # consumers, PostgreSQL, Redis and realtime: one worker per two cores. On the benchmark's 2
    # cores one worker beat 2 and 3 in every scenario (loadtests/README.md, "API workers").
    api_workers: int = setting(
        max(1, cores() // 2), "gunicorn worker processes of the API (each a gevent process using at most one core).",
        API, shown="half the cores, at least 1")
    api_threads: int = setting(
        16, "Threads per API process under `API_WORKER_CLASS=gthread`; a request with `Prefer: wait` holds one "
        "while it waits.", API)
    api_worker_connections: int = setting(
        1000, "Concurrent connections per API process under `API_WORKER_CLASS=gevent`.", API)
    realtime_host: str = setting("127.0.0.1", "Address the Socket.IO server binds to.", f"{REALTIME}, {LAUNCHER}")
    realtime_port: int = setting(
        8001, "The Socket.IO port (HAProxy's, when `REALTIME_PROCESSES` is more than 1).", f"{REALTIME}, {LAUNCHER}")
    realtime_async_mode: str = setting(
        "eventlet", "python-socketio's async mode: `eventlet`, `gevent` or `threading`.", REALTIME)
    # Socket.IO processes; with more than one, HAProxy listens on REALTIME_PORT and spreads
    # clients over them (sticky by cookie), each on REALTIME_BACKEND_PORT + i (default
    # REALTIME_PORT + 1 + i) on loopback.
    realtime_processes: int = setting(
        1, "Socket.IO processes `manage.py up` starts; with more than one, HAProxy spreads clients over them, "
        "sticky by cookie.", LAUNCHER)
    realtime_backend_port: int = setting(
        0, "First loopback port of the Socket.IO processes behind HAProxy; 0: `REALTIME_PORT` + 1.", LAUNCHER,
        shown="`REALTIME_PORT` + 1")
    realtime_backends: str = setting(
        "", "Where HAProxy sends Socket.IO clients, `host:port,host:port`, one per process; empty: "
        "127.0.0.1 on `REALTIME_BACKEND_PORT` + i (compose names the containers).", LAUNCHER,
        shown="(loopback ports)")
    balancer_processes: int = setting(
        1, "HAProxy processes in front of the Socket.IO processes (with `REALTIME_PROCESSES` > 1); they share "
        "`REALTIME_PORT` (SO_REUSEPORT). Each holds at most (its descriptor limit - 200) / 2 clients, so add one "
        "where the hard `ulimit -n` cannot be raised that far.", LAUNCHER)
    flower_port: int = setting(5555, "Flower's port.", f"{FLOWER}, {LAUNCHER}")
    log_level: str = setting("INFO", "Log level: DEBUG, INFO, WARNING, ERROR.", ALL)
    log_format: str = setting(
        "text", "`text`, or `json`: one JSON object per line with time, level, process, logger, message and "
        "the `request_id` of the HTTP request a line is about (from `X-Request-ID`, or a new one).", ALL)
    db_pool_size: int = setting(
        10, "SQLAlchemy connections kept per process; PostgreSQL's `max_connections` must cover every process.",
        f"{API}, {WORKERS}, {SWEEPER}, {REALTIME}")
    # Public leaderboard broadcasts per competition are coalesced into at most one per
    # interval; see DESIGN.md "Why the public room is coalesced". The oldest change of a
    # broadcast waits about this long, so it is most of the spectators' latency (issue 10).
    broadcast_interval: float = setting(
        0.15, "Shortest gap in seconds between two public broadcasts of one competition (longer when "
        "broadcasts take long).", REALTIME)
    # How often a realtime server re-reads the competitions it serves (state, freeze) from
    # PostgreSQL, in case a pub/sub message about them was lost.
    realtime_refresh: float = setting(
        1.0, "Seconds between two re-reads of the served competitions' state and freeze, in case a message "
        "was lost.", REALTIME)
    leaderboard_size: int = setting(10, "Teams in a `leaderboard_update` and the default leaderboard page.",
                                    f"{API}, {REALTIME}")
    max_wait_seconds: int = setting(10, "Longest `Prefer: wait=N` the API honours.", API)
    # Requests of one API process that may wait (``Prefer: wait``) at once, each parking a
    # thread or a greenlet; 0 means three quarters of the process's threads or connections, so
    # some stay free for other work.
    max_waiters: int = setting(
        0, "Requests of one API process that may wait (`Prefer: wait`) at once; 0: three quarters of "
        "`API_WORKER_CONNECTIONS` (gevent) or of `API_THREADS` (gthread).", API,
        shown="3/4 of `API_WORKER_CONNECTIONS` or `API_THREADS`")
    max_body_bytes: int = setting(65536, "Largest request body in bytes (413 above); at least 1024.", API)
    sweep_interval: float = setting(5.0, "Seconds between two sweeps.", SWEEPER)
    sweep_after: float = setting(
        15.0, "Age in seconds after which an unfinished job's message counts as lost and is sent again.", SWEEPER)
    cors_origins: tuple[str, ...] = setting(
        (), "Origins allowed to call the API from a browser, comma-separated; empty allows none (Socket.IO then "
        "accepts any origin).", f"{API}, {REALTIME}", shown="(none)")
    redis_prefix: str = setting("quiz", "Prefix of every Redis key and channel, so stacks can share one Redis.",
                                f"{API}, {WORKERS}, {SWEEPER}, {REALTIME}")
    # Signs team tokens from a random per-registration seed (so a replay can return the token).
    # Required in production, and never the admin token.
    secret_key: str = setting(
        DEV_SECRET_KEY, "Signs team tokens (from a random seed per registration). Required in production "
        f"({MIN_SECRET_KEY}+ characters, not a pattern), and never the admin token.", API,
        shown="a development key")
    # Writes allowed per window, per team and per client address (0 turns a limit off).
    rate_limit_window: int = setting(10, "Length in seconds of the rate-limit windows.", API)
    rate_limit_team: int = setting(100, "Writes per team per window; 0 turns the limit off.", API)
    rate_limit_ip: int = setting(1000, "Writes per client address per window; 0 turns the limit off.", API)
    # Reads (GET) allowed per window, per team token and per client address.
    rate_limit_read_team: int = setting(600, "Reads (GET) per team token per window; 0 turns the limit off.", API)
    rate_limit_read_ip: int = setting(6000, "Reads (GET) per client address per window; 0 turns the limit off.", API)
    # Registrations per client address per registration window. A school hall behind one NAT
    # registers all its teams in a few minutes: 200 per 10 minutes covers two hundred teams.
    rate_limit_register_ip: int = setting(
        200, "Registrations per client address per registration window (a school behind one NAT).", API)
    rate_limit_register_window: int = setting(600, "Length in seconds of the registration window.", API)
    # A second bearer token that may read /metrics only (Prometheus); the admin token may too.
    metrics_token: str = setting(
        "", "A bearer token that may read `/metrics` only (for Prometheus); the admin token may too.", API)
    # Where the API's gunicorn workers keep their request counters, so a scrape of any worker sums
    # them all (prometheus_client's multiprocess mode); web/gunicorn_conf.py empties it at start.
    prometheus_multiproc_dir: str = setting(
        "", "Folder of the API workers' shared request metrics (prometheus_client's multiprocess mode), emptied "
        "at each start; empty: a new temporary folder per start, removed at exit.", API,
        env="PROMETHEUS_MULTIPROC_DIR", shown="a new temporary folder")
    # Finished jobs older than this are purged by the sweeper (their Idempotency-Keys with them).
    job_retention_seconds: int = setting(
        7 * 24 * 3600, "Finished jobs older than this many seconds are purged, their Idempotency-Keys with them.",
        SWEEPER)
    # A worker applies up to this many waiting jobs of its queue in one transaction.
    worker_batch_size: int = setting(50, "Most jobs a consumer applies in one transaction.", WORKERS)
    # Wrong answers allowed per team per minute before submissions are refused with 429.
    wrong_answer_limit: int = setting(
        30, "Wrong answers per team per minute before submissions get 429; 0 turns it off.", API)
    # Fault tests only: a folder of failpoint files (models/failpoints.py); empty turns them off.
    failpoints_dir: str = setting("", "Fault tests only: a folder of failpoint files; empty turns them off.",
                                  f"{WORKERS}, {API}")

    @property
    def wait_capacity(self) -> int:
        concurrency = self.api_worker_connections if self.api_worker_class == "gevent" else self.api_threads
        return self.max_waiters or max(1, concurrency * 3 // 4)

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def app_database(self) -> str:
        """The URL the app processes connect with (see ``app_database_url``)."""
        return self.app_database_url or self.database_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        environment = env.get("QUIZ_ENV", "development")
        production = environment == "production"
        admin_token = env.get("ADMIN_TOKEN", "")
        api_host = env.get("API_HOST", cls.api_host)
        realtime_host = env.get("REALTIME_HOST", cls.realtime_host)
        if not admin_token:
            if production:
                raise SettingsError("ADMIN_TOKEN must be set when QUIZ_ENV=production")
            # The well-known development token must not guard a server others can reach.
            exposed = [h for h in (api_host, realtime_host) if not _is_loopback(h)]
            if exposed:
                raise SettingsError(
                    f"ADMIN_TOKEN must be set when listening on {exposed[0]}: the development token "
                    "only works on 127.0.0.1")
            admin_token = DEV_ADMIN_TOKEN
        elif production and (len(admin_token) < 16 or admin_token == DEV_ADMIN_TOKEN):
            raise SettingsError("ADMIN_TOKEN must be at least 16 characters in production, "
                                "and not the development token")
        secret_key = env.get("SECRET_KEY", "")
        if production:
            if not secret_key:
                raise SettingsError("SECRET_KEY must be set when QUIZ_ENV=production "
                                    "(e.g. `openssl rand -hex 32`)")
            weakness = weak_secret(secret_key, MIN_SECRET_KEY)
            if weakness:
                raise SettingsError(f"SECRET_KEY {weakness}; use e.g. `openssl rand -hex 32`")
        if secret_key and secret_key == admin_token:
            raise SettingsError("SECRET_KEY must differ from ADMIN_TOKEN")
        metrics_token = env.get("METRICS_TOKEN", "")
        if metrics_token and production and weak_secret(metrics_token, 16):
            raise SettingsError(f"METRICS_TOKEN {weak_secret(metrics_token, 16)}")
        async_mode = env.get("REALTIME_ASYNC_MODE", "eventlet")
        if async_mode not in ("eventlet", "gevent", "threading"):
            raise SettingsError(f"REALTIME_ASYNC_MODE must be eventlet, gevent or threading, got {async_mode!r}")
        worker_class = env.get("API_WORKER_CLASS", cls.api_worker_class) or cls.api_worker_class
        if worker_class not in ("gevent", "gthread"):
            raise SettingsError(f"API_WORKER_CLASS must be gevent or gthread, got {worker_class!r}")
        origins = tuple(o.strip() for o in env.get("CORS_ORIGINS", "").split(",") if o.strip())
        log_format = env.get("LOG_FORMAT", "text") or "text"
        if log_format not in ("text", "json"):
            raise SettingsError(f"LOG_FORMAT must be text or json, got {log_format!r}")
        return cls(
            environment=environment,
            database_url=_normalise_db_url(env.get("DATABASE_URL", cls.database_url)),
            app_database_url=_normalise_db_url(env.get("APP_DATABASE_URL", "")),
            redis_url=env.get("REDIS_URL", cls.redis_url),
            admin_token=admin_token,
            board_queues=_int(env, "BOARD_QUEUES", cls.board_queues, minimum=1),
            # MYSTERY_SHARDS is this setting's name before the queues were renamed competition.N.
            competition_queues=_int(env, "COMPETITION_QUEUES" if env.get("COMPETITION_QUEUES") else "MYSTERY_SHARDS",
                                    cls.competition_queues, minimum=1),
            api_host=api_host,
            api_port=_int(env, "API_PORT", cls.api_port, minimum=1),
            api_worker_class=worker_class,
            api_workers=_int(env, "API_WORKERS", cls.api_workers, minimum=1),
            api_threads=_int(env, "API_THREADS", cls.api_threads, minimum=1),
            api_worker_connections=_int(env, "API_WORKER_CONNECTIONS", cls.api_worker_connections, minimum=1),
            realtime_host=realtime_host,
            realtime_port=_int(env, "REALTIME_PORT", cls.realtime_port, minimum=1),
            realtime_async_mode=async_mode,
            realtime_processes=_int(env, "REALTIME_PROCESSES", cls.realtime_processes, minimum=1),
            realtime_backend_port=_int(env, "REALTIME_BACKEND_PORT", cls.realtime_backend_port),
            realtime_backends=env.get("REALTIME_BACKENDS", ""),
            balancer_processes=_int(env, "BALANCER_PROCESSES", cls.balancer_processes, minimum=1),
            flower_port=_int(env, "FLOWER_PORT", cls.flower_port, minimum=1),
            log_level=env.get("LOG_LEVEL", cls.log_level).upper(),
            log_format=log_format,
            db_pool_size=_int(env, "DB_POOL_SIZE", cls.db_pool_size, minimum=1),
            broadcast_interval=_float(env, "BROADCAST_INTERVAL", cls.broadcast_interval),
            realtime_refresh=_float(env, "REALTIME_REFRESH", cls.realtime_refresh, minimum=0.1),
            leaderboard_size=_int(env, "LEADERBOARD_SIZE", cls.leaderboard_size, minimum=1),
            max_wait_seconds=_int(env, "MAX_WAIT_SECONDS", cls.max_wait_seconds, minimum=1),
            max_waiters=_int(env, "MAX_WAITERS", cls.max_waiters),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", cls.max_body_bytes, minimum=1024),
            sweep_interval=_float(env, "SWEEP_INTERVAL", cls.sweep_interval, minimum=0.1),
            sweep_after=_float(env, "SWEEP_AFTER", cls.sweep_after),
            cors_origins=origins,
            redis_prefix=env.get("REDIS_PREFIX", cls.redis_prefix),
            secret_key=secret_key or DEV_SECRET_KEY,
            rate_limit_window=_int(env, "RATE_LIMIT_WINDOW", cls.rate_limit_window, minimum=1),
            rate_limit_team=_int(env, "RATE_LIMIT_TEAM", cls.rate_limit_team),
            rate_limit_ip=_int(env, "RATE_LIMIT_IP", cls.rate_limit_ip),
            rate_limit_read_team=_int(env, "RATE_LIMIT_READ_TEAM", cls.rate_limit_read_team),
            rate_limit_read_ip=_int(env, "RATE_LIMIT_READ_IP", cls.rate_limit_read_ip),
            rate_limit_register_ip=_int(env, "RATE_LIMIT_REGISTER_IP", cls.rate_limit_register_ip),
            rate_limit_register_window=_int(env, "RATE_LIMIT_REGISTER_WINDOW", cls.rate_limit_register_window,
                                            minimum=1),
            metrics_token=metrics_token,
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR", ""),
            job_retention_seconds=_int(env, "JOB_RETENTION_SECONDS", cls.job_retention_seconds, minimum=60),
            worker_batch_size=_int(env, "WORKER_BATCH_SIZE", cls.worker_batch_size, minimum=1),
            wrong_answer_limit=_int(env, "WRONG_ANSWER_LIMIT", cls.wrong_answer_limit),
            failpoints_dir=env.get("FAILPOINTS_DIR", ""),
        )

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

def configuration_doc() -> str:
    """docs/configuration.md, from the fields of Settings: ``python -m settings > docs/configuration.md``."""
    from dataclasses import MISSING, fields

    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from settings.py by `python -m settings > docs/configuration.md`; do not edit by hand. -->",
        "",
        "Every process reads its settings once, from the environment, through `Settings.from_env()` in",
        "`settings.py`. The defaults suit a laptop (`python3 manage.py up`); `docker-compose.yml` sets the",
        "production values and `.env.example` lists the secrets it requires. \"Applies to\" names the",
        "processes that read a setting (`consumers` are the Celery workers, `manage.py` the launcher).",
        "",
        "| variable | default | applies to | meaning |",
        "|---|---|---|---|",
    ]
    for spec in fields(Settings):
        meta = spec.metadata
        if not meta:
            raise ValueError(f"Settings.{spec.name} has no documentation: declare it with setting(...)")
        default = spec.default if spec.default is not MISSING else None
        shown = meta["shown"] or (f"`{default}`" if default not in ("", ()) else "(empty)")
        env = meta["env"] or spec.name.upper()
        lines.append(f"| `{env}` | {shown} | {meta['applies']} | {meta['doc']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(configuration_doc(), end="")
