"""The broker contract: the Celery configuration every process shares, and sending a job's message.

A job's message is a normal Celery task message (protocol 2) named by its kind (``models.kinds``),
so Flower lists every job, and the consumers (``workers.celery_app``, built from the same
``celery_config``) run it as any task. The API, the sweeper and the consumers only send, and they
send it as kombu's Redis transport would: the same JSON envelope, pushed with one ``LPUSH`` onto
the queue's list. Celery's ``send_task`` cost about 0.5 ms of CPU per message here (it builds the
message through several layers and reads the exchange's bindings from Redis each time); this costs
a few tens of microseconds. The task's id is the job's id, so a job's task in Flower is found by
the job's id, and a consumer can find the message of a job it has already applied (see
``models.live.ABSORB``).
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import uuid
from typing import Any

import msgspec
import redis
from celery import Celery

from logs import current_request_id
from models.kinds import REGISTRATIONS, task_name
from models.live import redis_client
from settings import Settings

log = logging.getLogger("models.broker")

_encode = msgspec.json.Encoder().encode
# The body's third part: no callbacks, no chain, no chord (Celery's "embed").
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per consumer: with acks_late, a killed worker's message is
        # redelivered, and its job (a row in PostgreSQL) is applied by whoever takes the queue next.
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # A job's row is the truth; if a message is not acked in this time (worker hung
            # or killed) Redis redelivers it and the worker finds the job done or redoes it.
            "visibility_timeout": 300,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        },
        "task_default_queue": REGISTRATIONS,
        "task_create_missing_queues": True,
        # Flower builds its task list from these events: received, started, succeeded (with the
        # task's return value, the job's outcome), retried.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
    }


def task_message(job_id: str, kind: str, queue: str, *, origin: str, reply_to: str,
                 request_id: str | None = None) -> bytes:
    """The Celery protocol-2 message of one job, in kombu's Redis envelope, as ``send_task`` builds it.

    ``kwargs`` is ``{"job_id": ...}``; the task id is the job's id. The HTTP request's id rides
    along as a message header, so the consumer's log lines carry it.
    """
    kwargs = {"job_id": job_id}
    body = base64.b64encode(_encode([[], kwargs, _EMBED])).decode()
    headers: dict[str, Any] = {
        "lang": "py", "task": task_name(kind), "id": job_id, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": job_id,
        "parent_id": None, "argsrepr": "()", "kwargsrepr": repr(kwargs), "origin": origin,
        "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    if request_id:
        headers["request_id"] = request_id
    return _encode({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": job_id, "reply_to": reply_to, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            # kombu's unacked bookkeeping is keyed by this tag: unique per message, also per re-send.
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    })


class Producer:
    """Sends job messages; built once per process, on its own Redis connection pool."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.origin = f"{os.getpid()}@{socket.gethostname()}"
        self.reply_to = str(uuid.uuid4())

    def send(self, job_id: str, kind: str, queue: str, request_id: str | None = None) -> None:
        # A queue's list is named by the queue (kombu's Redis transport, priority 0): the consumer
        # of ``queue`` takes it from there.
        self.redis.lpush(queue, task_message(job_id, kind, queue, origin=self.origin, reply_to=self.reply_to,
                                             request_id=request_id))

    def close(self) -> None:
        self.redis.close()


def producer(settings: Settings) -> Producer:
    """The process's job sender, on the broker (``REDIS_URL``), as the consumers read it."""
    return Producer(redis_client(settings.redis_url, max_connections=32))


def control_app(settings: Settings) -> Celery:
    """A Celery app without tasks, to ask the workers (ping, inspect) as the health check does."""
    app = Celery("quiz", broker=settings.redis_url, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def enqueue(sender: Producer, job_id: str, kind: str, queue: str) -> None:
    """Send one committed job's message: one message per job, always."""
    sender.send(job_id, kind, queue, current_request_id())
    log.info("job %s (%s) sent to %s", job_id, kind, queue)
