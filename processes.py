"""Every process kind of the stack, defined once.

The launcher (``manage.py up``), the test suite's stack (``tests/support.py``), the benchmark's
stack (``loadtests/stack.py``) and ``docker-compose.yml`` (through
``tests/integration/test_compose.py``) all take their command lines from ``KINDS``; none of them
writes a command of its own.

Each queue has exactly one consumer with concurrency 1 (DESIGN.md, "Serial per queue"): the
consumer kind has one instance per queue, never more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from settings import Settings
from workers.routing import all_queues


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


def _flower(settings: Settings) -> list[dict[str, str]]:
    # Flower has no login of its own, so it binds wherever the API binds: loopback on a laptop,
    # all interfaces in a container (where compose publishes it on the host's loopback only).
    return [{"name": "flower", "port": str(settings.flower_port), "address": settings.api_host}]


KINDS: tuple[Kind, ...] = (
    Kind("migrate", ("python", "-m", "models.migrate"), "one, before the rest", restart=False,
         instances=_one("migrate"), oneshot=True),
    Kind("api", ("gunicorn", "-c", "web/gunicorn_conf.py", "web.wsgi:app"),
         "one (API_WORKERS processes x API_THREADS threads inside)", restart=True, instances=_one("api")),
    Kind("consumer",
         ("celery", "-A", "workers.celery_app", "worker", "-Q", "{queue}", "-c", "1", "-P", "solo",
          "-n", "{queue}@%h", "--without-gossip", "--without-mingle", "-l", "{log_level}"),
         "exactly one per queue: registrations, board.N, mystery.N", restart=True, instances=_per_queue),
    Kind("sweeper", ("python", "-m", "workers.sweeper"), "one", restart=True, instances=_one("sweeper")),
    Kind("realtime", ("python", "-m", "realtime"), "one per Socket.IO port", restart=True,
         instances=_one("realtime")),
    Kind("flower", ("celery", "-A", "workers.celery_app", "flower", "--port={port}", "--address={address}"),
         "one", restart=True, instances=_flower),
)  # fmt: skip


def kind(name: str) -> Kind:
    return next(k for k in KINDS if k.name == name)


def expand(k: Kind, settings: Settings) -> list[Process]:
    return [
        Process(values["name"], k.name, [part.format(**values) for part in k.command], k.restart)
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
