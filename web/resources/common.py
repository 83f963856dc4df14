"""Helpers shared by resources: competition lookup, job acceptance, pagination."""

from __future__ import annotations

import base64
import logging
import re
import uuid
from typing import Any

import falcon
from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models import failpoints
from models.events import job_view
from models.tables import Competition, Job
from web.deps import Deps
from web.errors import Problem, invalid
from web.media import write_json
from workers.enqueue import enqueue

log = logging.getLogger(__name__)

_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)
MAX_IDEMPOTENCY_KEY = 255


def get_competition(session: Session, slug: str) -> Competition:
    competition = session.scalar(select(Competition).where(Competition.slug == slug))
    if competition is None:
        raise Problem(falcon.HTTP_404, "competition-not-found", "Competition not found",
                      f"there is no competition {slug!r}")
    return competition


def prefer_wait(req: falcon.Request, maximum: int) -> int:
    header = req.get_header("Prefer")
    if not header:
        return 0
    match = _WAIT.search(header)
    return min(int(match.group(1)), maximum) if match else 0


def idempotency_key(req: falcon.Request) -> str | None:
    key = req.get_header("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise invalid("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters", falcon.HTTP_400)
    return key


_JOB_COLUMNS = ("id", "kind", "queue", "team_id", "owner_hash", "payload", "idempotency_key")


def _insert_job(source: Any = None) -> Any:
    """The job INSERT, built once; a retried write with the same Idempotency-Key inserts nothing.

    On the Core table: an ORM insert run with parameters would take SQLAlchemy's bulk path.
    """
    jobs = Job.__table__
    statement = pg_insert(jobs)
    if source is None:
        statement = statement.values({name: bindparam(name) for name in (*_JOB_COLUMNS, "competition_id")})
    else:
        statement = statement.from_select([*_JOB_COLUMNS, "competition_id"], source)
    return statement.on_conflict_do_nothing(
        index_elements=[jobs.c.owner_hash, jobs.c.idempotency_key],
        index_where=jobs.c.idempotency_key.is_not(None),
    ).returning(jobs.c.id)


_INSERT_JOB = _insert_job()
# The same, finding the competition by slug in the statement itself (a registration's only query).
_INSERT_JOB_BY_SLUG = _insert_job(
    select(*(bindparam(name, type_=getattr(Job, name).type) for name in _JOB_COLUMNS), Competition.id)
    .where(Competition.slug == bindparam("slug"))
)


def accept_job(
    req: falcon.Request,
    resp: falcon.Response,
    deps: Deps,
    *,
    competition: Competition | str,
    kind: str,
    queue: str,
    payload: dict[str, Any],
    owner_hash: bytes,
    team_id: int | None,
    extra: dict[str, Any] | None = None,
    session: Session | None = None,
) -> None:
    """Record the job, commit, enqueue, and answer 202 (or 200 if ``Prefer: wait`` was met).

    ``competition`` may be just a slug: the INSERT then finds the competition itself, which
    saves a registration one round trip (an unknown slug is a 404 all the same).
    ``session`` defaults to the request's; team writes pass an autocommit session, as the job
    row is the only thing they write.
    """
    session = session or req.context.session
    key = idempotency_key(req)
    wait = prefer_wait(req, deps.settings.max_wait_seconds)
    job_id = uuid.uuid4()
    values = {
        "id": job_id,
        "kind": kind,
        "queue": queue,
        "team_id": team_id,
        "owner_hash": owner_hash,
        "payload": payload,
        "idempotency_key": key,
    }
    # Listening starts before the INSERT: once the row is committed, a consumer draining the
    # queue may finish the job before this thread would otherwise get to subscribe.
    ticket = deps.waiter.register(str(job_id)) if wait else None
    try:
        if isinstance(competition, str):
            inserted = session.scalar(_INSERT_JOB_BY_SLUG, {**values, "slug": competition})
        else:
            inserted = session.scalar(_INSERT_JOB, {**values, "competition_id": competition.id})
        if inserted is None:
            if isinstance(competition, str):
                competition = get_competition(session, competition)
            existing = session.scalar(select(Job).where(Job.owner_hash == owner_hash, Job.idempotency_key == key))
            assert existing is not None
            if existing.kind != kind or existing.payload != payload or existing.competition_id != competition.id:
                raise invalid("Idempotency-Key", "this key was already used for a different request")
            respond_with_job(resp, existing, extra=extra, replayed=True)
            return
        session.commit()
        failpoints.pause(deps.settings, "api-after-commit")
        try:
            if _needs_message(deps, queue):
                enqueue(deps.celery, str(job_id), kind, queue)
        except Exception:
            # The job row is committed; the sweeper re-sends it once the broker is back.
            log.exception("enqueue of job %s failed; the sweeper will re-send it", job_id)
        if ticket is not None:
            job = deps.waiter.wait(ticket, wait, lambda: _finished_job(session, job_id))
            if job is not None:
                resp.set_header("Preference-Applied", f"wait={wait}")
                respond_with_job(resp, job, extra=extra, finished=True)
                return
    finally:
        if ticket is not None:
            deps.waiter.release(ticket)
    body = {"jobId": str(job_id), "status": "queued", "links": {"job": f"/api/v1/jobs/{job_id}"}}
    if extra:
        body.update(extra)
    resp.location = f"/api/v1/jobs/{job_id}"
    write_json(resp, body, falcon.HTTP_202)


def _finished_job(session: Session, job_id: uuid.UUID) -> Job | None:
    session.expire_all()
    job = session.get(Job, job_id)
    return job if job is not None and job.status in ("succeeded", "failed") else None


def _needs_message(deps: Deps, queue: str) -> bool:
    try:
        return deps.live.wake(queue)
    except Exception:
        # Without the flag, a message per job is always safe.
        log.warning("wake flag unavailable; sending a message", exc_info=True)
        return True


def respond_with_job(resp: falcon.Response, job: Job, *, extra: dict[str, Any] | None = None,
                     finished: bool = False, replayed: bool = False) -> None:
    body = job_view(job)
    if extra:
        body.update(extra)
    resp.location = f"/api/v1/jobs/{job.id}"
    if replayed:
        resp.set_header("Idempotent-Replayed", "true")
    done = job.status in ("succeeded", "failed")
    write_json(resp, body, falcon.HTTP_200 if (finished or (replayed and done)) else falcon.HTTP_202)


def page_params(req: falcon.Request, default: int = 50, maximum: int = 200) -> tuple[int, int]:
    """``limit`` and the offset encoded in an opaque ``cursor``."""
    limit = default
    raw = req.get_param("limit")
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            raise invalid("limit", "must be an integer", falcon.HTTP_400) from None
        if not 1 <= limit <= maximum:
            raise invalid("limit", f"must be between 1 and {maximum}", falcon.HTTP_400)
    offset = 0
    cursor = req.get_param("cursor")
    if cursor:
        try:
            offset = int(base64.urlsafe_b64decode(cursor.encode() + b"==").decode().removeprefix("o:"))
            if offset < 0:
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            raise invalid("cursor", "is not a cursor this API issued", falcon.HTTP_400) from None
    return limit, offset


def next_cursor(offset: int, limit: int, returned: int) -> str | None:
    if returned < limit:
        return None
    return base64.urlsafe_b64encode(f"o:{offset + limit}".encode()).decode().rstrip("=")
