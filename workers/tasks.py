"""Celery tasks: one per job kind, generated from ``models.kinds``, each running ``run_job``.

A task is named by its kind (``quiz.jobs.claim``) and returns the job's outcome (``succeeded``,
``failed: <code>``), which the worker's task-succeeded event carries to Flower even though
results are not stored. Every task is idempotent (the job row says whether it is done), so
messages are acked late and redelivered if a worker dies mid-job.
"""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

import redis.exceptions
from celery import Task
from celery.signals import worker_process_init, worker_ready
from sqlalchemy.exc import DBAPIError, OperationalError

from models.kinds import KINDS, JobKind, task_name
from workers.celery_app import EventBatchingConsumer, app
from workers.jobs import Absorbed, JobCrashed, WorkerContext, drain, fail_job, run_job

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
MAX_RETRIES = 8

_context: WorkerContext | None = None


def context() -> WorkerContext:
    # Built lazily in the process that runs tasks, so no pooled connection crosses a fork.
    global _context
    if _context is None:
        _context = WorkerContext.create(app.conf.quiz_settings)
        _context.on_absorbed = report_absorbed
    return _context


def report_absorbed(jobs: list[Absorbed]) -> None:
    """Tell Flower of the tasks whose messages a batch took off the queue, as Celery would have.

    The events a worker sends for a message it runs (received, started, succeeded with the task's
    return value), through the worker's own dispatcher, so they go out with the others.
    """
    consumer = EventBatchingConsumer.current
    dispatcher = getattr(consumer, "event_dispatcher", None)
    if dispatcher is None or not dispatcher.enabled:
        return
    for job in jobs:
        kwargs = {"job_id": job.job_id}
        dispatcher.send("task-received", uuid=job.job_id, name=task_name(job.kind), args="()", kwargs=repr(kwargs),
                        root_id=job.job_id, parent_id=None, retries=0, eta=None, expires=None)
        dispatcher.send("task-started", uuid=job.job_id)
        dispatcher.send("task-succeeded", uuid=job.job_id, result=repr(job.outcome), runtime=job.seconds)


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    global _context
    _context = None


@worker_ready.connect
def _warm_up(sender: Any = None, **_: object) -> None:
    # Connect before the first job arrives, so its latency is not the pool's start-up.
    with context().engine.connect():
        pass
    context().live.redis.ping()
    # Whatever a crashed predecessor left is applied now, not when the next message or the
    # sweeper comes (its own messages wait for the broker's visibility timeout).
    queues = list(sender.app.amqp.queues.consume_from) if sender is not None else []
    for queue in queues:
        try:
            taken = drain(context(), queue)
        except Exception:
            log.exception("could not drain %s at start-up; its next message or the sweeper will", queue)
            continue
        if taken:
            log.warning("applied %d job(s) left waiting on %s", taken, queue)


class JobTask(Task):
    acks_late = True
    reject_on_worker_lost = True
    max_retries = MAX_RETRIES
    ignore_result = True

    def run_kind(self, job_id: str) -> str:
        job_uuid = uuid.UUID(job_id)
        try:
            return run_job(context(), job_uuid)
        except (*TRANSIENT, DBAPIError, JobCrashed) as exc:
            if self.request.retries >= self.max_retries:
                log.error("job %s gave up after %d retries: %s", job_id, self.request.retries, exc)
                fail_job(context(), job_uuid, "internal_error", "the job could not be completed; try again")
                return "failed: internal_error"
            # Exponential backoff with jitter, capped at 5 s.
            delay = min(5.0, 0.1 * 2**self.request.retries) * random.uniform(0.5, 1.5)
            raise self.retry(exc=exc, countdown=delay) from exc
        except Exception:
            # A bug, not a transient fault: answer the client rather than loop forever.
            log.exception("job %s crashed", job_id)
            fail_job(context(), job_uuid, "internal_error", "the job could not be completed")
            return "failed: internal_error"


def _task_for(kind: JobKind) -> Task:
    def run(self: JobTask, *, job_id: str) -> str:
        return self.run_kind(job_id)

    run.__name__ = run.__qualname__ = kind.name
    run.__doc__ = f"Apply a {kind.name} job: {kind.doc}."
    return app.task(base=JobTask, bind=True, name=kind.task)(run)


# Every rule is attached (workers.rules checks it at import), so every kind has its task.
TASKS: dict[str, Task] = {kind.name: _task_for(kind) for kind in KINDS.values()}
