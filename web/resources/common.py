"""Helpers shared by resources: competition lookup, job acceptance, pagination."""

from __future__ import annotations

import base64
import functools
import hmac
import logging
import re
import uuid
from typing import Any

import falcon
from sqlalchemy import LargeBinary, Text, bindparam, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models import failpoints
from models.broker import enqueue
from models.events import job_view
from models.tables import Competition, Job, Team
from web.auth import CompetitionRef, replay_may_see_token, team_token
from web.deps import Deps
from web.errors import Problem, check_slug, competition_not_found, invalid
from web.media import write_json
from web.transactions import after_commit, on_close
from web.waiter import JOB_VIEW_COLUMNS, Ticket

log = logging.getLogger(__name__)

_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)
MAX_IDEMPOTENCY_KEY = 255


def get_competition(session: Session, slug: str) -> Competition:
    check_slug(slug)
    competition = session.scalar(select(Competition).where(Competition.slug == slug))
    if competition is None:
        raise competition_not_found(slug)
    return competition


def prefer_wait(req: falcon.Request, maximum: int) -> int:
    header = req.get_header("Prefer")
    if not header:
        return 0
    match = _WAIT.search(header)
    if not match:
        return 0
    digits = match.group(1).lstrip("0")
    # int() of thousands of digits is refused by Python (and slow): any long number means "the most".
    return maximum if len(digits) > 6 else min(int(digits or "0"), maximum)


def idempotency_key(req: falcon.Request) -> str | None:
    key = req.get_header("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise invalid("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters", falcon.HTTP_400)
    return key


_JOB_COLUMNS = ("id", "kind", "queue", "team_id", "owner_hash", "payload", "idempotency_key", "request_id")


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


def _insert_team_job() -> Any:
    """A team's write as one statement: the INSERT finds the team by its token within the
    competition, so authenticating the caller costs no round trip of its own. Nothing is inserted
    for an unknown token, a token of another competition, or a replayed Idempotency-Key."""
    jobs = Job.__table__
    names = ("id", "kind", "queue", "payload", "idempotency_key", "request_id")
    source = (
        select(*(bindparam(name, type_=getattr(Job, name).type) for name in names),
               Team.id, Team.competition_id, Team.token_hash)
        .where(Team.token_hash == bindparam("owner_hash"), Team.competition_id == bindparam("competition_id"))
    )
    statement = pg_insert(jobs).from_select([*names, "team_id", "competition_id", "owner_hash"], source)
    return statement.on_conflict_do_nothing(
        index_elements=[jobs.c.owner_hash, jobs.c.idempotency_key],
        index_where=jobs.c.idempotency_key.is_not(None),
    ).returning(jobs.c.id)


_INSERT_TEAM_JOB = _insert_team_job()


class CallerUnknown(Exception):
    """``accept_job(find_team=True)`` found no team of that token in that competition: the caller
    looks the team up (which answers 401, 403 or 404) and tries again."""


def _insert_registration() -> Any:
    """A registration's only query: finds the competition by slug, checks its registration code and
    records the job. A registration has no owner yet, so a retried Idempotency-Key conflicts on
    (competition, key) instead; any conflict inserts nothing."""
    jobs = Job.__table__
    columns = [*_JOB_COLUMNS, "token_seed", "competition_id"]
    source = (
        select(*(bindparam(name, type_=getattr(Job, name).type) for name in _JOB_COLUMNS),
               bindparam("token_seed", type_=LargeBinary), Competition.id)
        .where(Competition.slug == bindparam("slug"),
               or_(Competition.registration_code.is_(None),
                   Competition.registration_code == bindparam("code", type_=Text)))
    )
    return pg_insert(jobs).from_select(columns, source).on_conflict_do_nothing().returning(jobs.c.id)


_INSERT_REGISTRATION = _insert_registration()


def registration_code_invalid(given: str | None) -> Problem:
    message = "is required for this competition" if given is None else "is not this competition's code"
    return Problem(falcon.HTTP_403, "registration-code-invalid", "Registration code invalid",
                   f"registrationCode {message}; ask the organisers for it",
                   errors=[{"field": "registrationCode", "message": message}])


def _replayed_registration(session: Session, slug: str, key: str | None, code: str | None) -> tuple[Competition, Job]:
    """Why a registration INSERT wrote nothing: an unknown slug (404), a wrong code (403), or a
    replayed Idempotency-Key (the original job)."""
    competition = get_competition(session, slug)
    expected = competition.registration_code
    if expected is not None and (code is None or not hmac.compare_digest(code.encode(), expected.encode())):
        raise registration_code_invalid(code)
    existing = None if key is None else session.scalar(select(Job).where(
        Job.competition_id == competition.id, Job.kind == "register", Job.idempotency_key == key))
    if existing is None:
        raise Problem(falcon.HTTP_409, "conflict", "Conflict", "the request conflicts with the current state; retry")
    return competition, existing


def accept_job(
    req: falcon.Request,
    resp: falcon.Response,
    deps: Deps,
    *,
    competition: Competition | CompetitionRef | str,
    kind: str,
    queue: str,
    payload: dict[str, Any],
    owner_hash: bytes,
    team_id: int | None,
    extra: dict[str, Any] | None = None,
    token_seed: bytes | None = None,
    registration_code: str | None = None,
    find_team: bool = False,
) -> None:
    """Record the job; once it is committed, enqueue it and answer 202 (or 200 if ``Prefer: wait``
    was met). A replayed Idempotency-Key answers with the original job at once.

    ``competition`` is just a slug for a registration: the INSERT then finds the competition
    (and checks its registration code) itself, which saves a registration round trips.
    ``find_team``: the INSERT finds the team whose token hashes to ``owner_hash`` in
    ``competition`` itself (``team_id`` is ignored), or raises ``CallerUnknown``.
    Runs on the request's session: a team write declares ``@writes_one_statement``, as the job
    row is the only thing it writes; an organiser's write is part of its ``@writes`` transaction.
    """
    session: Session = req.context.session
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
        "request_id": getattr(req.context, "request_id", None),
    }
    # Listening starts before the INSERT: once the row is committed, a consumer draining the
    # queue may finish the job before this thread would otherwise get to subscribe.
    ticket = deps.waiter.register(str(job_id)) if wait else None
    if ticket is not None:
        # However the request ends: after the wait, or with a refused INSERT or a failed commit.
        on_close(req, functools.partial(deps.waiter.release, ticket))
    if isinstance(competition, str):
        check_slug(competition)
        inserted = session.scalar(_INSERT_REGISTRATION, {**values, "slug": competition, "token_seed": token_seed,
                                                         "code": registration_code})
    elif find_team:
        inserted = session.scalar(_INSERT_TEAM_JOB, {**values, "competition_id": competition.id})
    else:
        inserted = session.scalar(_INSERT_JOB, {**values, "competition_id": competition.id})
    if inserted is None:
        if isinstance(competition, str):
            competition, existing = _replayed_registration(session, competition, key, registration_code)
            # The token goes only to whoever knows a key nobody could guess; a replay of a short
            # key gets the job without it, as it may come from another client.
            extra = ({"teamToken": team_token(deps.settings, existing.token_seed)}
                     if existing.token_seed is not None and replay_may_see_token(key) else None)
        else:
            existing = None if key is None else session.scalar(
                select(Job).where(Job.owner_hash == owner_hash, Job.idempotency_key == key))
            if find_team and (existing is None or existing.competition_id != competition.id):
                raise CallerUnknown
        if existing is None:
            raise Problem(falcon.HTTP_409, "conflict", "Conflict",
                          "the request conflicts with the current state; retry")
        if existing.kind != kind or existing.payload != payload or existing.competition_id != competition.id:
            raise invalid("Idempotency-Key", "this key was already used for a different request")
        respond_with_job(resp, existing, extra=extra, replayed=True)
        return
    # Nothing of the job is told before its row is committed: neither the broker nor the client.
    after_commit(req, functools.partial(_announce_job, resp, deps, job_id, kind, queue, ticket, wait, extra))


def _announce_job(resp: falcon.Response, deps: Deps, job_id: uuid.UUID, kind: str, queue: str,
                  ticket: Ticket | None, wait: int, extra: dict[str, Any] | None) -> None:
    """``accept_job``'s after-commit hook: enqueue the committed job and answer for it."""
    failpoints.pause(deps.settings, "api-after-commit")
    try:
        enqueue(deps.producer, str(job_id), kind, queue)
    except Exception:
        # The job row is committed; the sweeper re-sends it once the broker is back.
        log.exception("enqueue of job %s failed; the sweeper will re-send it", job_id)
    if ticket is not None:
        job = deps.waiter.wait(ticket, wait)
        if job is not None:
            resp.set_header("Preference-Applied", f"wait={wait}")
            respond_with_job(resp, job, extra=extra, finished=True)
            return
    body = {"jobId": str(job_id), "status": "queued", "links": {"job": f"/api/v1/jobs/{job_id}"}}
    if extra:
        body.update(extra)
    resp.location = f"/api/v1/jobs/{job_id}"
    write_json(resp, body, falcon.HTTP_202)


# Plain columns, not an ORM entity, built once: polls are most of a busy API's queries.
JOB_FOR_VIEW = select(*JOB_VIEW_COLUMNS).where(Job.id == bindparam("job_id"))


def respond_with_job(resp: falcon.Response, job: Any, *, extra: dict[str, Any] | None = None,
                     finished: bool = False, replayed: bool = False) -> None:
    """Answer with a job: a row (``Job`` or its columns), or its view as the waiter got it from the channel."""
    body = dict(job) if isinstance(job, dict) else job_view(job)
    if extra:
        body.update(extra)
    resp.location = body["links"]["job"]
    if replayed:
        resp.set_header("Idempotent-Replayed", "true")
    done = body["status"] in ("succeeded", "failed")
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
