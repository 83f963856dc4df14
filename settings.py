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


# Where a setting applies, for docs/configuration.md.
ALL = "every process"
API = "api"
WORKERS = "consumers"
SWEEPER = "sweeper"
REALTIME = "realtime"
FLOWER = "flower"
LAUNCHER = "manage.py"


def setting(default: Any, doc: str, applies: str, *, env: str | None = None, shown: str | None = None) -> Any:
    """A Settings field with what docs/configuration.md says about it.

    ``env`` is the variable's name when it is not the field's name in capitals; ``shown`` replaces
    the default in the document when the default alone would mislead.
    """
    return field(default=default, metadata={"doc": doc, "applies": applies, "env": env, "shown": shown})


@dataclass(frozen=True)
class Settings:
    environment: str = setting(
        "development", "`production` turns on the production checks: a strong `ADMIN_TOKEN` is required.",
        ALL, env="QUIZ_ENV")
    database_url: str = setting(
        "postgresql+psycopg://postgres@127.0.0.1:5432/quiz",
        "PostgreSQL, e.g. `postgresql://user:password@host:5432/quiz`; `postgres://` and `postgresql://` "
        "are taken to mean psycopg 3. Unset, `manage.py` starts an embedded server and sets it.",
        f"{API}, {WORKERS}, {SWEEPER}, {REALTIME}, migrate, seed",
        shown="embedded server (`manage.py`)")
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis: the Celery broker, live events, rate limits and caches, e.g. `redis://:password@host:6379/0`. "
        "Unset, `manage.py` starts an embedded server and sets it.",
        f"{API}, {WORKERS}, {SWEEPER}, {REALTIME}, {FLOWER}", shown="embedded server (`manage.py`)")
    admin_token: str = setting(
        DEV_ADMIN_TOKEN, "Organisers' bearer token, for the API and Socket.IO; at least 16 characters in production, "
        "where it has no default.", f"{API}, {REALTIME}")
    board_queues: int = setting(
        4, "Number of `board.N` queues (claims and answers, routed by question); one consumer each.",
        f"{API}, {WORKERS}, {SWEEPER}, {LAUNCHER}")
    mystery_shards: int = setting(
        1, "Number of `mystery.N` queues (mystery-box draws, routed by competition); one consumer each.",
        f"{API}, {WORKERS}, {SWEEPER}, {LAUNCHER}")
    api_host: str = setting("127.0.0.1", "Address the API binds to; Flower binds to the same one under `manage.py`.",
                            f"{API}, {LAUNCHER}")
    api_port: int = setting(8000, "The API's port.", f"{API}, {LAUNCHER}")
    # More processes with fewer threads: under load the GIL hands over badly among many busy
    # threads (loadtests/README.md, "API workers and threads"). Threads are still needed, as
    # ``Prefer: wait`` parks one per waiting request.
    api_workers: int = setting(3, "gunicorn worker processes of the API.", API)
    api_threads: int = setting(
        16, "Threads per API process; a request with `Prefer: wait` holds one while it waits.", API)
    realtime_host: str = setting("127.0.0.1", "Address the Socket.IO server binds to.", f"{REALTIME}, {LAUNCHER}")
    realtime_port: int = setting(8001, "The Socket.IO server's port.", f"{REALTIME}, {LAUNCHER}")
    realtime_async_mode: str = setting(
        "eventlet", "python-socketio's async mode: `eventlet`, `gevent` or `threading`.", REALTIME)
    flower_port: int = setting(5555, "Flower's port.", f"{FLOWER}, {LAUNCHER}")
    log_level: str = setting("INFO", "Log level: DEBUG, INFO, WARNING, ERROR.", ALL)
    log_format: str = setting(
        "text", "`text`, or `json`: one JSON object per line with time, level, process, logger, message and "
        "the `request_id` of the HTTP request a line is about (from `X-Request-ID`, or a new one).", ALL)
    db_pool_size: int = setting(
        10, "SQLAlchemy connections kept per process; PostgreSQL's `max_connections` must cover every process.",
        f"{API}, {WORKERS}, {SWEEPER}, {REALTIME}")
    # Public leaderboard broadcasts per competition are coalesced into at most one per
    # interval; see DESIGN.md "Why the public room is coalesced".
    broadcast_interval: float = setting(
        0.25, "Shortest gap in seconds between two public broadcasts of one competition (longer when "
        "broadcasts take long).", REALTIME)
    leaderboard_size: int = setting(10, "Teams in a `leaderboard_update` and the default leaderboard page.",
                                    f"{API}, {REALTIME}")
    max_wait_seconds: int = setting(10, "Longest `Prefer: wait=N` the API honours.", API)
    max_body_bytes: int = setting(65536, "Largest request body in bytes (413 above); at least 1024.", API)
    sweep_interval: float = setting(5.0, "Seconds between two sweeps.", SWEEPER)
    sweep_after: float = setting(
        15.0, "Age in seconds after which an unfinished job's message counts as lost and is sent again.", SWEEPER)
    cors_origins: tuple[str, ...] = setting(
        (), "Origins allowed to call the API from a browser, comma-separated; empty allows none (Socket.IO then "
        "accepts any origin).", f"{API}, {REALTIME}", shown="(none)")
    redis_prefix: str = setting("quiz", "Prefix of every Redis key and channel, so stacks can share one Redis.",
                                f"{API}, {WORKERS}, {SWEEPER}, {REALTIME}")
    # Derives deterministic registration tokens for idempotent retries; defaults to the admin token.
    secret_key: str = setting(
        "", "Key that signs what the server derives (registration tokens for idempotent retries).", API,
        shown="`ADMIN_TOKEN`'s value")
    # Writes allowed per window, per team and per client address (0 turns a limit off).
    rate_limit_window: int = setting(10, "Length in seconds of the rate-limit windows.", API)
    rate_limit_team: int = setting(100, "Writes per team per window; 0 turns the limit off.", API)
    rate_limit_ip: int = setting(1000, "Writes per client address per window; 0 turns the limit off.", API)
    # A worker applies up to this many waiting jobs of its queue in one transaction.
    worker_batch_size: int = setting(50, "Most jobs a consumer applies in one transaction.", WORKERS)
    # Wrong answers allowed per team per minute before submissions are refused with 429.
    wrong_answer_limit: int = setting(
        30, "Wrong answers per team per minute before submissions get 429; 0 turns it off.", API)

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        environment = env.get("QUIZ_ENV", "development")
        admin_token = env.get("ADMIN_TOKEN", "")
        if not admin_token:
            if environment == "production":
                raise SettingsError("ADMIN_TOKEN must be set when QUIZ_ENV=production")
            admin_token = DEV_ADMIN_TOKEN
        elif environment == "production" and len(admin_token) < 16:
            raise SettingsError("ADMIN_TOKEN must be at least 16 characters in production")
        async_mode = env.get("REALTIME_ASYNC_MODE", "eventlet")
        if async_mode not in ("eventlet", "gevent", "threading"):
            raise SettingsError(f"REALTIME_ASYNC_MODE must be eventlet, gevent or threading, got {async_mode!r}")
        origins = tuple(o.strip() for o in env.get("CORS_ORIGINS", "").split(",") if o.strip())
        log_format = env.get("LOG_FORMAT", "text") or "text"
        if log_format not in ("text", "json"):
            raise SettingsError(f"LOG_FORMAT must be text or json, got {log_format!r}")
        return cls(
            environment=environment,
            database_url=_normalise_db_url(env.get("DATABASE_URL", cls.database_url)),
            redis_url=env.get("REDIS_URL", cls.redis_url),
            admin_token=admin_token,
            board_queues=_int(env, "BOARD_QUEUES", cls.board_queues, minimum=1),
            mystery_shards=_int(env, "MYSTERY_SHARDS", cls.mystery_shards, minimum=1),
            api_host=env.get("API_HOST", cls.api_host),
            api_port=_int(env, "API_PORT", cls.api_port, minimum=1),
            api_workers=_int(env, "API_WORKERS", cls.api_workers, minimum=1),
            api_threads=_int(env, "API_THREADS", cls.api_threads, minimum=1),
            realtime_host=env.get("REALTIME_HOST", cls.realtime_host),
            realtime_port=_int(env, "REALTIME_PORT", cls.realtime_port, minimum=1),
            realtime_async_mode=async_mode,
            flower_port=_int(env, "FLOWER_PORT", cls.flower_port, minimum=1),
            log_level=env.get("LOG_LEVEL", cls.log_level).upper(),
            log_format=log_format,
            db_pool_size=_int(env, "DB_POOL_SIZE", cls.db_pool_size, minimum=1),
            broadcast_interval=_float(env, "BROADCAST_INTERVAL", cls.broadcast_interval),
            leaderboard_size=_int(env, "LEADERBOARD_SIZE", cls.leaderboard_size, minimum=1),
            max_wait_seconds=_int(env, "MAX_WAIT_SECONDS", cls.max_wait_seconds, minimum=1),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", cls.max_body_bytes, minimum=1024),
            sweep_interval=_float(env, "SWEEP_INTERVAL", cls.sweep_interval, minimum=0.1),
            sweep_after=_float(env, "SWEEP_AFTER", cls.sweep_after),
            cors_origins=origins,
            redis_prefix=env.get("REDIS_PREFIX", cls.redis_prefix),
            secret_key=env.get("SECRET_KEY", "") or admin_token,
            rate_limit_window=_int(env, "RATE_LIMIT_WINDOW", cls.rate_limit_window, minimum=1),
            rate_limit_team=_int(env, "RATE_LIMIT_TEAM", cls.rate_limit_team),
            rate_limit_ip=_int(env, "RATE_LIMIT_IP", cls.rate_limit_ip),
            worker_batch_size=_int(env, "WORKER_BATCH_SIZE", cls.worker_batch_size, minimum=1),
            wrong_answer_limit=_int(env, "WRONG_ANSWER_LIMIT", cls.wrong_answer_limit),
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
