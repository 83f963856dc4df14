"""Running jobs: idempotent, serial per queue, then the after-commit announcements.

Every job has a message of its own, so Flower lists each one under its kind with its outcome,
and a queue's length in the broker is its backlog. A message names one job, but the worker
takes that job together with the other jobs already waiting on its queue (oldest first,
``worker_batch_size`` per transaction, until none is left) and applies them, each with its own
result: inside its own savepoint, unless the kind declares it needs none (``models.kinds``).
Once the batch is committed, the worker takes the messages of the other jobs it applied off its
queue's list on its announcements' last Redis round trip (``models.live.ABSORB``) and reports
each as a finished task to Flower itself, so a message whose job is done costs neither Celery's
handling of a message nor a database read. A message not found there (not yet sent, or already
taken by the worker) comes later and acks at once: the worker remembers those outcomes.
Batching keeps the per-queue order and the one-consumer-per-queue guarantee, and turns N
commits, N job updates and N Redis round trips into a few: the batch locks and loads its teams
and reads the clock in one statement, and writes every job's outcome in one executemany.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Engine, bindparam, exists, func, literal_column, select, union_all, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

import logs
from models import failpoints, metrics
from models.broker import Producer, enqueue, producer
from models.db import make_autocommit_sessionmaker, make_engine, make_sessionmaker
from models.kinds import KINDS
from models.live import Live, iso, utcnow
from models.tables import Competition, Job
from settings import Settings
from workers.publish import Announcement, Publisher
from workers.rules import RULES, SETTINGS, GameError, Outbox, audit, audited_action, lock_teams

log = logging.getLogger(__name__)

FINISHED = ("succeeded", "failed")
MAX_ATTEMPTS = 3
# How many committed outcomes a worker remembers for the messages still to come; a message whose
# job is not among them reads the job's row instead (one primary-key lookup).
REMEMBERED = 20_000


# Built once and run with bound parameters (building costs more CPU than a quiet queue's job).
# 'queued' is written into the SQL, not bound: the partial index on waiting jobs (status =
# 'queued') then matches even a generic plan of a statement psycopg has prepared.
_QUEUED = literal_column("'queued'")
_ANY_QUEUED = select(exists().where(Job.queue == bindparam("queue"), Job.status == _QUEUED))
# The waiting jobs of a queue, oldest first, each with its competition (a drain names no job).
_TAKE_QUEUED = (
    select(Job, Competition)
    .join(Competition, Competition.id == Job.competition_id)
    .where(Job.queue == bindparam("queue"), Job.status == _QUEUED)
    .order_by(Job.created_at)
    .limit(bindparam("limit"))
    .with_for_update(of=Job, skip_locked=True)
)


def _take_named() -> Any:
    """A message's job, locked (waiting for whoever holds it), with the oldest others of its queue.

    One round trip where it took three (read the job's status, lock it, take the others): the
    named job's queue comes from its own row, its lock is taken first and waited for as before,
    and the others are taken with ``SKIP LOCKED``. A named job that is missing takes nothing; one
    already finished comes back as it is, with the jobs still waiting on its queue.
    """
    named = select(Job).where(Job.id == bindparam("job_id")).with_for_update().cte("named")
    rest = (
        select(Job)
        .where(Job.queue == select(named.c.queue).scalar_subquery(), Job.status == _QUEUED,
               Job.id != bindparam("job_id"))
        .order_by(Job.created_at)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
        .cte("rest")
    )
    taken = aliased(Job, union_all(select(named), select(rest)).subquery("taken"))
    return select(taken, Competition).join(Competition, Competition.id == taken.competition_id)


_TAKE_NAMED = _take_named()


class Absorbed(NamedTuple):
    """A job whose message a batch took off its queue: what Flower is told of its task."""

    job_id: str
    kind: str
    outcome: str
    seconds: float


class JobCrashed(Exception):
    """The named job hit an unexpected error; it stays queued and its message is retried."""


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    autocommit: sessionmaker[Session]
    live: Live
    publisher: Publisher
    _producer: Producer | None = None
    # Outcomes this process committed whose message has not come yet, oldest first (see run_job).
    finished: dict[uuid.UUID, str] = field(default_factory=dict)
    # Told of the jobs whose messages the batch took off the queue (``models.live.ABSORB``) (the worker sends their task
    # events); without it (tests, tools), messages are left for the worker to ack one by one.
    on_absorbed: Callable[[list[Absorbed]], None] | None = None

    @property
    def producer(self) -> Producer:
        """For jobs a job creates (a disqualification's releases); built on first use."""
        if self._producer is None:
            self._producer = producer(self.settings)
        return self._producer

    def absorbed(self, removed: list[str], jobs: dict[uuid.UUID, tuple[str, str, float]]) -> set[uuid.UUID]:
        """Report the jobs (id: kind, outcome, seconds) whose messages ``ABSORB`` removed; their ids."""
        ids = {uuid.UUID(r) for r in removed}
        if ids and self.on_absorbed is not None:
            self.on_absorbed([Absorbed(str(i), *jobs[i]) for i in ids if i in jobs])
        return ids

    def remember(self, outcomes: dict[uuid.UUID, str]) -> None:
        self.finished.update(outcomes)
        # Messages that never come (a job with none, a message lost) must not grow this forever.
        for _ in range(len(self.finished) - REMEMBERED):
            del self.finished[next(iter(self.finished))]

    @classmethod
    def create(cls, settings: Settings) -> WorkerContext:
        engine = make_engine(settings, pool_size=2)
        live = Live(settings)
        return cls(settings, engine, make_sessionmaker(engine), make_autocommit_sessionmaker(engine), live,
                   Publisher(settings, live))


def _record(job: Job, done: list[dict[str, Any]], **values: Any) -> None:
    """Set a job's columns without making it dirty; the batch writes them all in one executemany."""
    for name, value in values.items():
        set_committed_value(job, name, value)
    done.append({"id": job.id, **values})


def _tally(batch: list[Job], run_seconds: dict[uuid.UUID, float], queue: str, *, batched: bool = True
           ) -> metrics.Tally:
    """What a committed batch (or a job given up on, not ``batched``) adds to the consumers' metrics."""
    tally = metrics.Tally()
    if batched:
        tally.observe(metrics.BATCH_SIZE, (queue,), len(batch))
    for job in batch:
        state = job.status if job.status in FINISHED else "retried"
        tally.inc(metrics.CONSUMER_JOBS, (queue, job.kind, state))
        if job.id in run_seconds:
            tally.observe(metrics.JOB_RUN, (job.kind,), run_seconds[job.id])
        if state != "retried" and job.finished_at is not None:
            tally.observe(metrics.JOB_VISIBLE, (job.kind,), (job.finished_at - job.created_at).total_seconds())
    return tally


def _apply(session: Session, job: Job, done: list[dict[str, Any]]) -> Announcement | None:
    """Apply one locked, unfinished job (in a savepoint unless it writes once). None: it crashed, stays queued.

    The job's new columns go into ``done`` (see ``_record``).
    """
    competition = session.get(Competition, job.competition_id)
    assert competition is not None
    outbox = Outbox()
    started = job.started_at or utcnow()
    # Job columns are written once, after the rule, so each job costs a single UPDATE.
    rule = RULES[job.kind]
    savepoint = KINDS[job.kind].savepoint
    try:
        if not savepoint:
            result = rule(session, competition, job, outbox)
        else:
            with session.begin_nested():
                result = rule(session, competition, job, outbox)
        status, error = "succeeded", None
    except GameError as refusal:
        outbox = Outbox()
        result, status, error = None, "failed", {"code": refusal.code, "message": refusal.message}
        _audit_refusal(session, job, error)
    except DBAPIError as exc:
        if exc.connection_invalidated or not savepoint:
            # Without a savepoint the transaction is aborted: the whole batch is retried.
            raise
        # The savepoint is rolled back; the rest of the batch is unaffected.
        log.exception("job %s (%s) failed in the database, attempt %d", job.id, job.kind, job.attempts + 1)
        if job.attempts + 1 < MAX_ATTEMPTS:
            _record(job, done, attempts=job.attempts + 1)
            return None
        outbox = Outbox()
        result, status, error = None, "failed", {"code": "internal_error", "message": "the job could not be completed"}
        _audit_refusal(session, job, error)
    values: dict[str, Any] = {
        "attempts": job.attempts + 1,
        "started_at": started,
        "result": result,
        "status": status,
        "error": error,
    }
    if job.kind == "register" and result is not None:
        values["team_id"] = result["teamId"]
    _record(job, done, **values)
    return Announcement(competition, job, outbox)


def _audit_refusal(session: Session, job: Job, error: dict[str, str]) -> None:
    # Outside the rule's rolled-back savepoint, in the batch's transaction: the refusal is
    # recorded exactly when (and only if) the job's failure is.
    action = audited_action(job)
    if action is not None:
        audit(session, job, action[0], action[1], None, {"request": job.payload, "error": error}, "refused")


def outcome(status: str, error: dict[str, Any] | None) -> str:
    """A finished job's outcome as its task returns it, so Flower shows it: ``failed: <code>``."""
    if status == "failed":
        return f"failed: {(error or {}).get('code', 'unknown')}"
    return status


def run_job(ctx: WorkerContext, job_id: uuid.UUID) -> str:
    """Apply the named job exactly once, and every job waiting on its queue with it.

    Returns the named job's outcome (``succeeded``, ``failed: <code>``), also when an earlier
    batch or another process applied it; ``missing`` if there is no such job (purged).
    """
    known = ctx.finished.pop(job_id, None)
    if known is not None:
        # This process committed it in a batch that another message woke: nothing to read.
        return known
    result, taken, queue = _run_batch(ctx, job_id, None)
    while queue is not None and taken >= ctx.settings.worker_batch_size:
        _, taken, _ = _run_batch(ctx, None, queue)
    if result is None:
        log.warning("job %s does not exist; dropping the message", job_id)
        return "missing"
    return result


def drain(ctx: WorkerContext, queue: str) -> int:
    """Apply every job waiting on ``queue``; returns how many were taken.

    A consumer does this when it starts, so the jobs of a predecessor that crashed, or whose
    messages are still unacknowledged in the broker, do not wait for the next message.
    """
    total = 0
    while True:
        _, taken, _ = _run_batch(ctx, None, queue)
        total += taken
        if taken < ctx.settings.worker_batch_size:
            return total


def _run_batch(ctx: WorkerContext, job_id: uuid.UUID | None, queue: str | None
               ) -> tuple[str | None, int, str | None]:
    """One transaction over the named job (if any) and the oldest waiting jobs of its queue.

    Returns the named job's outcome (None if no job was named, or it does not exist), how many
    rows the batch took (the named job counted even if it was finished), and the queue.
    """
    if job_id is None:
        with ctx.autocommit() as session:
            if not session.scalar(_ANY_QUEUED, {"queue": queue}):
                return None, 0, queue
    announcements: list[Announcement] = []
    named: str | None = None
    crashed = False
    with ctx.sessions.begin() as session:
        session.info[SETTINGS] = ctx.settings
        if job_id is not None:
            rows = session.execute(_TAKE_NAMED, {"job_id": job_id, "limit": ctx.settings.worker_batch_size - 1}).all()
        else:
            rows = session.execute(_TAKE_QUEUED, {"queue": queue, "limit": ctx.settings.worker_batch_size}).all()
        taken = [row[0] for row in rows]
        batch: list[Job] = []
        for job in taken:
            if job.id == job_id:
                queue = job.queue
                if job.status in FINISHED:
                    # Another batch or process applied it before its message came.
                    named = outcome(job.status, job.error)
                    continue
            batch.append(job)
        batch.sort(key=lambda j: j.created_at)
        lock_teams(session, {j.team_id for j in batch if j.team_id is not None})
        done: list[dict[str, Any]] = []
        run_seconds: dict[uuid.UUID, float] = {}
        for item in batch:
            started = time.perf_counter()
            # Each job's log lines carry its own write's id, not that of the message that woke the batch.
            with logs.request_id_scope(item.request_id) if item.request_id else contextlib.nullcontext():
                announcement = _apply(session, item, done)
            run_seconds[item.id] = time.perf_counter() - started
            if announcement is not None:
                announcements.append(announcement)
            elif item.id == job_id:
                crashed = True
        _write_jobs(session, done, {j.id: j for j in batch})
    outcomes = {j.id: outcome(j.status, j.error) for j in batch if j.status in FINISHED}
    if job_id is not None and job_id in outcomes:
        named = outcomes.pop(job_id)
    if queue is None:
        # The named job does not exist (purged): nothing was taken.
        return None, 0, None
    failpoints.pause(ctx.settings, f"consumer-after-commit.{queue}")
    tally = _tally(batch, run_seconds, queue) if batch else None
    kinds = {j.id: j.kind for j in batch}
    applied = {i: (kinds[i], o, run_seconds.get(i, 0.0)) for i, o in outcomes.items()}
    # The other jobs' messages leave the queue on the announcements' last round trip, after the
    # waiters and the room are told (only when the worker reports them to Flower).
    absorb = (queue, [str(i) for i in applied]) if applied and ctx.on_absorbed is not None else None
    if announcements:
        # The metrics ride on the announcements' last round trip, after the events.
        removed = ctx.publisher.announce_all(announcements, utcnow(), tally, absorb=absorb)
        _send_created_jobs(ctx, announcements)
        absorbed = ctx.absorbed(removed, applied)
    else:
        absorbed: set[uuid.UUID] = set()
        if tally is not None:
            tally.flush(ctx.live.redis, ctx.settings.redis_prefix)
    # Committed: the other jobs' messages still to come (not taken off the queue) are answered
    # without a read.
    ctx.remember({i: o for i, o in outcomes.items() if i not in absorbed})
    if crashed:
        raise JobCrashed(f"job {job_id} crashed; retrying")
    return named, len(taken), queue


def _send_created_jobs(ctx: WorkerContext, announcements: list[Announcement]) -> None:
    for a in announcements:
        for job_id, kind, queue in a.outbox.enqueue:
            try:
                enqueue(ctx.producer, job_id, kind, queue)
            except Exception:
                # The row is committed; the sweeper re-sends it.
                log.warning("could not send job %s; the sweeper will", job_id, exc_info=True)


# The batch's last statement. ``finished_at`` is stamped here, right before the COMMIT that makes
# the result visible, and not when the rule ran: the outcomes of a batch all become readable at
# once, so a job's finish is never reported earlier than anyone can read it.
#
# Sent unprepared, so PostgreSQL plans it for each batch with the table as it is then. Prepared
# (psycopg prepares a statement after its fifth run), the plan made while the jobs table was still
# nearly empty is kept for the connection's life: it read the whole table for every batch (a hash
# join, or a scan filtered by ``id = ANY``), a cost that grew with every job recorded (the
# database's CPU per job doubled over three 30 s register-and-claim runs; 3,073 scans reading
# 41.5 million rows in two). Nothing re-plans it where autovacuum is off, as on the benchmark's
# machine; planning it afresh costs less than one such scan of a few thousand rows.
_FINISH_JOBS = """
UPDATE jobs AS j
   SET status = v.status, result = v.result, error = v.error, attempts = v.attempts,
       started_at = v.started_at, team_id = COALESCE(v.team_id, j.team_id), finished_at = clock_timestamp()
  FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS v(id uuid, status text, result jsonb, error jsonb,
                                                        attempts int, started_at timestamptz, team_id bigint)
 WHERE j.id = v.id AND j.id = ANY(%(ids)s)
RETURNING j.id, j.finished_at
"""


def _write_jobs(session: Session, done: list[dict[str, Any]], jobs: dict[uuid.UUID, Job]) -> None:
    finished = [row for row in done if "status" in row]
    retried = [row for row in done if "status" not in row]
    if retried:
        # A job whose savepoint failed stays queued with one more attempt counted.
        session.execute(update(Job), retried)
    if not finished:
        return
    rows = json.dumps([
        {**row, "id": str(row["id"]), "started_at": iso(row["started_at"])} for row in finished
    ])
    ids = [row["id"] for row in finished]
    # psycopg's own cursor on the session's connection (in its transaction): SQLAlchemy has no way
    # to ask for one statement unprepared.
    driver = session.connection().connection.driver_connection
    with driver.cursor() as cursor:
        cursor.execute(_FINISH_JOBS, {"rows": rows, "ids": ids}, prepare=False)
        for job_id, finished_at in cursor.fetchall():
            set_committed_value(jobs[job_id], "finished_at", finished_at)


def fail_job(ctx: WorkerContext, job_id: uuid.UUID, code: str, message: str) -> None:
    """Give up on a job that keeps crashing, so its client gets an answer."""
    with ctx.sessions.begin() as session:
        job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None or job.status in FINISHED:
            return
        job.status = "failed"
        job.error = {"code": code, "message": message}
        job.finished_at = func.clock_timestamp()
        session.flush()
        session.refresh(job, ["finished_at"])
        competition = session.get(Competition, job.competition_id)
        assert competition is not None
    ctx.publisher.announce_all([Announcement(competition, job, Outbox())], utcnow(),
                               _tally([job], {}, job.queue, batched=False))
