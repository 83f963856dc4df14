"""Container healthchecks: ``python -m deploy.healthcheck KIND``; exit 0 when healthy.

    api | realtime | flower   GET the process's own health URL on loopback
    celery                    the consumer in this container answers a ping over the broker
    services                  PostgreSQL and Redis answer (for the sweeper, which serves nothing)

Ports and URLs come from the same Settings the process itself read, so a deployment that moves a
port moves its healthcheck with it. The slim image has no curl, hence Python.
"""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path

from settings import Settings

TIMEOUT = 5.0


def _http(port: int, path: str) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as response:
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}")


def _worker_node_name() -> str:
    """The ``-n`` of the Celery worker running in this container, with ``%h`` expanded as Celery does."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "worker" in argv and "-n" in argv:
            return argv[argv.index("-n") + 1].replace("%h", socket.gethostname())
    raise RuntimeError("no celery worker process with -n in this container")


def _celery(settings: Settings) -> None:
    from models.broker import control_app

    name = _worker_node_name()
    replies = control_app(settings).control.ping(destination=[name], timeout=TIMEOUT)
    if not any(name in reply for reply in replies):
        raise RuntimeError(f"{name} did not answer a ping within {TIMEOUT:.0f} s")


def _services(settings: Settings) -> None:
    import redis
    from sqlalchemy import create_engine, pool, text

    engine = create_engine(settings.database_url, poolclass=pool.NullPool,
                           connect_args={"connect_timeout": int(TIMEOUT)})  # fmt: skip
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    redis.Redis.from_url(settings.redis_url, socket_timeout=TIMEOUT).ping()


def check(kind: str, settings: Settings) -> None:
    if kind == "api":
        _http(settings.api_port, "/healthz")
    elif kind == "realtime":
        _http(settings.realtime_port, "/healthz")
    elif kind == "flower":
        _http(settings.flower_port, "/healthcheck")
    elif kind == "celery":
        _celery(settings)
    elif kind == "services":
        _services(settings)
    else:
        raise ValueError(f"unknown healthcheck {kind!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        check(argv[0], Settings.from_env())
    except Exception as exc:  # any failure is "unhealthy"; say why for `docker inspect`
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
