"""Sending a committed job to its queue (used by the API and by the sweeper)."""

from __future__ import annotations

from celery import Celery

from workers.routing import TASK_FOR_KIND


def enqueue(celery: Celery, job_id: str, kind: str, queue: str) -> None:
    celery.send_task(TASK_FOR_KIND[kind], kwargs={"job_id": job_id}, queue=queue)
