"""The Celery application. ``celery -A workers.celery_app worker -Q <queue> -c 1 -P solo``."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.signals import setup_logging
from celery.worker.consumer import Consumer
from kombu import Queue
from kombu.transport import redis as kombu_redis

import logs
from models.broker import celery_config
from models.kinds import all_queues
from settings import Settings

# How long a consumer holds the task events it has to send (for Flower) to send them together.
EVENT_FLUSH_SECONDS = 0.2


class EventBatchingConsumer(Consumer):
    """Celery's consumer, sending the task events of every message of a short while in one publish.

    Celery buffers a message's task events (received, started, succeeded) and publishes them after
    the message: with one message per job, that publish was about a sixth of a consumer's CPU. Held for
    ``EVENT_FLUSH_SECONDS``, the events of all the messages of that time (under load, the messages of
    the jobs a batch has just applied) go out as one ``task.multi`` message, the form Celery's own
    buffering uses and Flower reads; Flower sees a task's state at most that much later.
    """

    _flush_pending = False
    # The process's consumer (a worker has one), whose event dispatcher also reports the tasks of
    # the messages a batch took off its queue itself (``workers.jobs.absorb``).
    current: EventBatchingConsumer | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        EventBatchingConsumer.current = self

    def on_send_event_buffered(self) -> None:
        if not self.hub:
            super().on_send_event_buffered()
        elif not self._flush_pending:
            self._flush_pending = True
            self.hub.call_later(EVENT_FLUSH_SECONDS, self._flush_held_events)

    def _flush_held_events(self) -> None:
        self._flush_pending = False
        self._flush_events()

    def shutdown(self) -> None:
        # Events still held go out before the dispatcher closes.
        self._flush_events()
        super().shutdown()


def _one_redis_client_per_channel() -> None:
    """Make kombu's Redis channel reuse one client object for its synchronous commands.

    kombu builds a new ``redis.Redis`` object (on the channel's shared connection pool) for every
    such command: the unacked bookkeeping of each delivered message, its ack, each event publish.
    Building one fills a dict of a few hundred response callbacks, a few percent of a consumer's
    CPU with one message per job. The object holds no connection of its own (each command takes
    one from the pool), so one per channel and pool does the same work.
    """
    build = kombu_redis.Channel._create_client
    if getattr(build, "reuses_client", False):
        return

    def create_client(channel: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            return build(channel, asynchronous=True)
        client = channel.__dict__.get("_quiz_client")
        if client is None or client.connection_pool is not channel.pool:
            client = channel.__dict__["_quiz_client"] = build(channel)
        return client

    create_client.reuses_client = True  # type: ignore[attr-defined]
    kombu_redis.Channel._create_client = create_client  # type: ignore[method-assign]


def create_celery(settings: Settings) -> Celery:
    # The producers' configuration (models/broker.py) plus the tasks, generated from the job kinds.
    app = Celery("quiz", broker=settings.redis_url, include=["workers.tasks"])
    app.conf.update(celery_config(settings))
    # Every queue, declared: Flower lists these on its Broker page, with their lengths, even when
    # it could not ask the workers which queues they consume (it asks once, as it starts, which
    # under `manage.py up` is before the workers are up, and the answer times out when they are busy).
    app.conf.task_queues = [Queue(name) for name in all_queues(settings)]
    app.conf.worker_consumer = f"{__name__}:EventBatchingConsumer"
    _one_redis_client_per_channel()
    app.conf.quiz_settings = settings
    if settings.log_format == "json":

        def json_logging(**_: Any) -> None:
            logs.configure(settings, process_name(sys.argv))

        # Connected, this signal replaces Celery's own logging set-up (its text lines) with ours.
        setup_logging.connect(json_logging, weak=False)
        if process_name(sys.argv) == "flower":
            # Flower sends no such signal; with a handler on the root logger already, tornado adds none.
            logs.configure(settings, "flower")
    return app


def process_name(argv: list[str]) -> str:
    """A consumer is named by its queue (``-Q board.0``), as the launcher and compose name it."""
    if "-Q" in argv[:-1]:
        return argv[argv.index("-Q") + 1]
    return "flower" if "flower" in argv else "celery"


app = create_celery(Settings.from_env())
