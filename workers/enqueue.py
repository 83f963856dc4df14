"""Sending a committed job to its queue (used by the API and by the sweeper)."""

from __future__ import annotations

import logging

from celery import Celery

from logs import current_request_id
from workers.routing import TASK_FOR_KIND

log = logging.getLogger("workers.enqueue")


def enqueue(celery: Celery, job_id: str, kind: str, queue: str) -> None:
    # The HTTP request's id rides along as a message header, so the consumer's log lines carry it.
    request_id = current_request_id()
    extra = {"headers": {"request_id": request_id}} if request_id else {}
    celery.send_task(TASK_FOR_KIND[kind], kwargs={"job_id": job_id}, queue=queue, **extra)
    log.info("job %s (%s) sent to %s", job_id, kind, queue)
