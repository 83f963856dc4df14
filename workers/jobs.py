"""Running one job: one transaction, idempotent, then the after-commit announcements."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, make_sessionmaker
from models.live import Live, utcnow
from models.tables import Competition, Job
from settings import Settings
from workers.publish import Publisher
from workers.rules import RULES, GameError, Outbox

log = logging.getLogger(__name__)

FINISHED = ("succeeded", "failed")


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    live: Live
    publisher: Publisher

    @classmethod
    def create(cls, settings: Settings) -> WorkerContext:
        # A solo worker runs one transaction at a time; two connections cover the sweeper-like
        # extra reads without holding idle connections per queue.
        engine = make_engine(settings, pool_size=2)
        live = Live(settings)
        return cls(settings, engine, make_sessionmaker(engine), live, Publisher(settings, live))


def run_job(ctx: WorkerContext, job_id: uuid.UUID) -> str | None:
    """Apply a job exactly once. Returns its final status, or None if it was already done."""
    with ctx.sessions.begin() as session:
        job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        if job.status in FINISHED:
            log.info("job %s already %s; redelivery ignored", job_id, job.status)
            return None
        competition = session.get(Competition, job.competition_id)
        assert competition is not None
        outbox = Outbox()
        job.attempts += 1
        job.started_at = job.started_at or utcnow()
        try:
            with session.begin_nested():
                job.result = RULES[job.kind](session, competition, job, outbox)
            job.status = "succeeded"
        except GameError as refusal:
            outbox = Outbox()
            job.status = "failed"
            job.error = {"code": refusal.code, "message": refusal.message}
        job.finished_at = utcnow()
    at = job.finished_at
    try:
        ctx.publisher.announce(competition, job, outbox, at)
        ctx.publisher.count_wrong(job)
    except Exception:
        # The game state is committed; a lost announcement is repaired by the sweeper's
        # leaderboard rebuild and by clients reading the job.
        log.exception("announcing job %s failed", job_id)
    try:
        ctx.publisher.job_finished(job)
    except Exception:
        log.exception("notifying waiters of job %s failed", job_id)
    return job.status


def fail_job(ctx: WorkerContext, job_id: uuid.UUID, code: str, message: str) -> None:
    """Give up on a job that keeps crashing, so its client gets an answer."""
    with ctx.sessions.begin() as session:
        job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None or job.status in FINISHED:
            return
        job.status = "failed"
        job.error = {"code": code, "message": message}
        job.finished_at = utcnow()
        competition = session.get(Competition, job.competition_id)
    try:
        ctx.publisher.announce(competition, job, Outbox(), job.finished_at)
        ctx.publisher.job_finished(job)
    except Exception:
        log.exception("announcing failed job %s failed", job_id)

