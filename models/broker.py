"""The broker contract: the Celery configuration every process shares, and sending a job's message.

The API and the sweeper only send; they build a producer here (``producer(settings)``), a Celery
app without the workers' tasks, so web/ never imports workers/. The consumers' app
(``workers.celery_app``) is built from the same ``celery_config``, so both ends agree on the
serializer and the transport options. A message is a normal Celery task message named by its
kind (``models.kinds``), so Flower lists every job.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from logs import current_request_id
from models.kinds import REGISTRATIONS, task_name
from settings import Settings

log = logging.getLogger("models.broker")


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


def producer(settings: Settings) -> Celery:
    """A Celery app that only sends job messages; built once per process."""
    app = Celery("quiz", broker=settings.redis_url, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def enqueue(celery: Celery, job_id: str, kind: str, queue: str) -> None:
    """Send one committed job's message: one message per job, always."""
    # The HTTP request's id rides along as a message header, so the consumer's log lines carry it.
    request_id = current_request_id()
    extra = {"headers": {"request_id": request_id}} if request_id else {}
    celery.send_task(task_name(kind), kwargs={"job_id": job_id}, queue=queue, **extra)
    log.info("job %s (%s) sent to %s", job_id, kind, queue)
