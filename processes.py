"""Every process kind of the stack, defined once.

The launcher (``manage.py up``), the test suite's stack (``tests/support.py``), the benchmark's
stack (``loadtests/stack.py``) and ``docker-compose.yml`` (through
``tests/integration/test_compose.py``) all take their command lines from ``KINDS``; none of them
writes a command of its own.

Each queue has exactly one consumer with concurrency 1 (DESIGN.md, "Serial per queue"): the
consumer kind has one instance per queue, never more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from models.kinds import all_queues
from settings import Settings


@dataclass(frozen=True)
class Kind:
    """A kind of process: its command (``{placeholders}`` filled per instance), how many, restarts."""

    name: str
    command: tuple[str, ...]
    how_many: str
    restart: bool
    instances: Callable[[Settings], list[dict[str, str]]]
    # Runs to completion before the long-running kinds start (migrations), rather than serving.
    oneshot: bool = False


@dataclass(frozen=True)
class Process:
    """One process of a running stack."""

    name: str
    kind: str
    argv: list[str]
    restart: bool
    # What this instance's environment adds to the stack's (a second realtime server's port).
    env: dict[str, str] = field(default_factory=dict)


def _one(name: str) -> Callable[[Settings], list[dict[str, str]]]:
    return lambda _settings: [{"name": name}]


def _per_queue(settings: Settings) -> list[dict[str, str]]:
    return [{"name": queue.replace(".", "-"), "queue": queue, "log_level": settings.log_level}
            for queue in all_queues(settings)]


def backend_port(settings: Settings, index: int) -> int:
    """The loopback port of realtime process ``index`` when a balancer fronts several."""
    return (settings.realtime_backend_port or settings.realtime_port + 1) + index


def _realtime(settings: Settings) -> list[dict[str, str]]:
    if settings.realtime_processes == 1:
        return [{"name": "realtime"}]
    return [{"name": f"realtime-{i}", "env.REALTIME_PORT": str(backend_port(settings, i))}
            for i in range(settings.realtime_processes)]


def _balancer(settings: Settings) -> list[dict[str, str]]:
    if settings.realtime_processes == 1:
        return []
    return [{"name": "balancer" if i == 0 else f"balancer-{i + 1}"} for i in range(settings.balancer_processes)]


def backends(settings: Settings) -> list[str]:
    """``host:port`` of each realtime process, as the balancer reaches it."""
    if settings.realtime_backends:
        return [b.strip() for b in settings.realtime_backends.split(",") if b.strip()]
    return [f"127.0.0.1:{backend_port(settings, i)}" for i in range(settings.realtime_processes)]


def balancer_config_path(settings: Settings) -> Path:
    return Path(tempfile.gettempdir()) / f"quiz-realtime-{settings.realtime_port}.haproxy.cfg"


BALANCER_MAXCONN = 100_000


def balancer_maxconn() -> int:
    """How many clients HAProxy may hold: each proxied connection takes two descriptors, and
    HAProxy refuses to start above its descriptor limit, so that limit is raised first where
    this process may (root, or a hard limit already high enough)."""
    want = 2 * BALANCER_MAXCONN + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    elif soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return BALANCER_MAXCONN
    return max(1000, min(BALANCER_MAXCONN, (hard - 200) // 2))


def balancer_config(settings: Settings) -> str:
    """HAProxy in front of the realtime processes.

    Engine.IO's long-polling transport sends each client's requests as separate HTTP requests,
    which must all reach the process that holds the session: the first answer sets a cookie
    naming the process, and the client sends it back (browsers and python-socketio do).
    WebSockets pass through as tunnels. A process that stops answering /healthz is taken out.
    """
    servers = "\n".join(
        f"    server realtime-{i} {address} check inter 2s fall 2 rise 1 cookie r{i}"
        for i, address in enumerate(backends(settings))
    )
    maxconn = balancer_maxconn()
    return f"""# Written by processes.py for REALTIME_PROCESSES={settings.realtime_processes}; do not edit.
global
    maxconn {maxconn}

defaults
    mode http
    # Stated here too: a frontend's own limit would otherwise be HAProxy's default, not the global one.
    maxconn {maxconn}
    timeout connect 5s
    # Above Engine.IO's ping interval + timeout (25 s + 20 s), so an idle poll is not cut.
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-request 10s

frontend realtime
    bind {settings.realtime_host}:{settings.realtime_port}
    default_backend realtime

backend realtime
    balance roundrobin
    cookie QUIZRT insert indirect nocache httponly
    option httpchk GET /healthz
{servers}
"""


def run_balancer(settings: Settings) -> None:
    """Write HAProxy's configuration for these settings and become HAProxy (``python -m processes balancer``).

    One command for the launcher and for compose: the configuration follows the environment.
    """
    import logs

    logs.configure(settings, "balancer")
    log = logging.getLogger("balancer")
    path = balancer_config_path(settings)
    # Several balancer processes may start at once: each writes the same file, whole, by rename.
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(balancer_config(settings))
    partial.replace(path)
    haproxy = shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if haproxy is None:
        log.error("haproxy is not installed (Debian: apt-get install haproxy)")
        raise SystemExit(1)
    log.info("HAProxy on %s:%s in front of %s", settings.realtime_host, settings.realtime_port,
             ", ".join(backends(settings)))
    logging.shutdown()
    os.execv(haproxy, [haproxy, "-W", "-db", "-f", str(path)])  # noqa: S606 - our own argv


def _flower(settings: Settings) -> list[dict[str, str]]:
    # Flower has no login of its own, so it binds wherever the API binds: loopback on a laptop,
    # all interfaces in a container (where compose publishes it on the host's loopback only).
    return [{"name": "flower", "port": str(settings.flower_port), "address": settings.api_host}]


KINDS: tuple[Kind, ...] = (
    Kind("migrate", ("python", "-m", "models.migrate"), "one, before the rest", restart=False,
         instances=_one("migrate"), oneshot=True),
    Kind("api", ("gunicorn", "-c", "web/gunicorn_conf.py", "web.wsgi:app"),
         "one (API_WORKERS gevent processes inside; gthread: x API_THREADS)", restart=True, instances=_one("api")),
    Kind("consumer",
         ("celery", "-A", "workers.celery_app", "worker", "-Q", "{queue}", "-c", "1", "-P", "solo",
          "-n", "{queue}@%h", "--without-gossip", "--without-mingle", "-l", "{log_level}"),
         "exactly one per queue: registrations, board.N, competition.N", restart=True, instances=_per_queue),
    Kind("sweeper", ("python", "-m", "workers.sweeper"), "one", restart=True, instances=_one("sweeper")),
    Kind("realtime", ("python", "-m", "realtime"), "REALTIME_PROCESSES (1)", restart=True, instances=_realtime),
    Kind("balancer", ("python", "-m", "processes", "balancer"),
         "BALANCER_PROCESSES (1) when REALTIME_PROCESSES > 1, else none", restart=True, instances=_balancer),
    Kind("flower", ("celery", "-A", "workers.celery_app", "flower", "--port={port}", "--address={address}"),
         "one", restart=True, instances=_flower),
)  # fmt: skip


def kind(name: str) -> Kind:
    return next(k for k in KINDS if k.name == name)


def expand(k: Kind, settings: Settings) -> list[Process]:
    return [
        Process(values["name"], k.name, [part.format(**values) for part in k.command], k.restart,
                {key[4:]: value for key, value in values.items() if key.startswith("env.")})
        for values in k.instances(settings)
    ]


def oneshots(settings: Settings) -> list[Process]:
    return [p for k in KINDS if k.oneshot for p in expand(k, settings)]


def stack(settings: Settings) -> list[Process]:
    """The long-running processes of the stack, in start order."""
    return [p for k in KINDS if not k.oneshot for p in expand(k, settings)]


def consumer(settings: Settings, queue: str) -> Process:
    """The one consumer of ``queue``."""
    return next(p for p in expand(kind("consumer"), settings) if p.argv[p.argv.index("-Q") + 1] == queue)


if __name__ == "__main__":
    if sys.argv[1:] != ["balancer"]:
        raise SystemExit("usage: python -m processes balancer")
    run_balancer(Settings.from_env())
