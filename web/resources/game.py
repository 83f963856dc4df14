"""Team-facing resources: registration, claims, answers, mystery boxes, jobs, reads."""

from __future__ import annotations

import uuid
from typing import Any

import falcon
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from models.events import job_view
from models.kinds import CLAIM, MYSTERY_BUY, MYSTERY_FORFEIT, REGISTER, REGISTRATIONS, SUBMIT, JobKind
from models.live import FrozenBoards, iso, utcnow
from models.names import InvalidName, normalise_name
from models.ranking import frozen_board, is_frozen, leaderboard, rank_of
from models.tables import Claim, Job, MysteryBox, Question, Submission, Team
from web.auth import (
    CompetitionRef,
    TeamRef,
    bearer,
    competition_and_team,
    is_admin,
    new_token_seed,
    team_token,
    token_hash,
    writer,
)
from web.deps import Deps
from web.errors import Problem, invalid
from web.media import read_body, write_json
from web.ratelimit import too_many
from web.resources.common import JOB_FOR_VIEW, CallerUnknown, accept_job, get_competition, next_cursor, page_params
from web.schemas import BuyMysteryBox, ClaimQuestion, RegisterTeam, SubmitAnswer
from web.transactions import reads, writes_one_statement


def clean_name(text: str, field: str) -> str:
    """A team or member name in its normal form, or a 422 naming the field and the reason."""
    try:
        return normalise_name(text)
    except InvalidName as exc:
        raise invalid(field, str(exc)) from None


class Teams:
    # Registrations have a per-address limit of their own (web.ratelimit).
    registers_teams = True

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @writes_one_statement
    def on_post(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        body = read_body(req, RegisterTeam, self.deps.settings.max_body_bytes)
        # The token comes from a seed drawn here, never from the request: a replayed
        # Idempotency-Key finds the original job and its seed (see accept_job).
        seed = new_token_seed()
        token = team_token(self.deps.settings, seed)
        payload: dict[str, Any] = {
            "teamName": clean_name(body.team_name, "teamName"),
            "members": [clean_name(m, f"members[{i}]") for i, m in enumerate(body.members)],
            "email": body.email,
        }
        if body.registration_code is not None:
            # The worker checks it again: the organisers may change the code meanwhile.
            payload["registrationCode"] = body.registration_code
        accept_job(req, resp, self.deps, competition=slug, kind=REGISTER.name, queue=REGISTRATIONS,
                   payload=payload, owner_hash=token_hash(token), team_id=None, extra={"teamToken": token},
                   token_seed=seed, registration_code=body.registration_code)


class TeamMe:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session: Session = req.context.session
        _, team = competition_and_team(req, session, slug)
        claims = session.execute(
            select(Question.code, Question.points, Claim.claimed_at,
                   exists().where(Submission.team_id == team.id, Submission.question_id == Question.id)
                   .label("answered"))
            .join(Claim, Claim.question_id == Question.id)
            .where(Claim.team_id == team.id)
            .order_by(Claim.claimed_at)
        ).all()
        box = session.execute(
            select(MysteryBox, Question.code, Question.text, Question.options)
            .join(Question, Question.id == MysteryBox.question_id)
            .where(MysteryBox.team_id == team.id, MysteryBox.state == "open")
        ).first()
        now = utcnow()
        write_json(resp, {
            "teamId": team.id,
            "teamName": team.name,
            "members": team.members,
            "email": team.email,
            "points": team.points,
            "rank": None if team.disqualified else rank_of(session, team),
            "disqualified": team.disqualified,
            "deadline": iso(team.deadline) if team.deadline else None,
            "remainingSeconds": max(0, int((team.deadline - now).total_seconds())) if team.deadline else None,
            "claims": [
                {"questionId": c.code, "points": c.points, "claimedAt": iso(c.claimed_at), "answered": c.answered}
                for c in claims
            ],
            "openMysteryBox": None if box is None else {
                "mysteryQuestionId": box.code,
                "question": box.text,
                "options": box.options,
                "difficulty": box.MysteryBox.difficulty,
                "potentialPoints": box.MysteryBox.reward,
                "deductedPoints": box.MysteryBox.price,
            },
        })


# Competition ids by slug, remembered by this process for the team writes' one-statement path. A
# slug never changes and a competition is never deleted; even so, the INSERT also checks the team's
# competition, so a wrong id costs the lookup the write would otherwise have made, never a job.
_COMPETITION_IDS: dict[str, int] = {}


class TeamWrite:
    """A team's write: authenticate, validate, record the job and enqueue it.

    The hot path of a live round, so its responders declare ``@writes_one_statement``: at most two
    statements (the competition and team lookup, the job INSERT), each one round trip, no BEGIN or
    COMMIT, and no ORM entity loaded.
    """

    kind: JobKind
    schema: type | None = None

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def question(self, body: Any) -> str | None:
        """The question a board kind is routed by."""
        return None

    def payload(self, body: Any) -> dict[str, Any]:
        return {}

    def check(self, team: TeamRef) -> None:
        """Refusals that need the team but no job."""

    def folds_lookup(self) -> bool:
        """Whether the team can be looked up by the job's INSERT itself (``check`` needs no team)."""
        return True

    def write(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session: Session = req.context.session
        competition_id = _COMPETITION_IDS.get(slug)
        token = bearer(req) if competition_id is not None else None
        if competition_id is not None and token is not None and self.folds_lookup():
            self._write_folded(req, resp, session, slug, CompetitionRef(competition_id), token)
            return
        competition, team = writer(req, session, slug)
        _COMPETITION_IDS[slug] = competition.id
        body = read_body(req, self.schema, self.deps.settings.max_body_bytes) if self.schema else None
        self.check(team)
        self._accept(req, resp, competition, body, team)

    def _write_folded(self, req: falcon.Request, resp: falcon.Response, session: Session, slug: str,
                      competition: CompetitionRef, token: str) -> None:
        """One statement for the whole write: the job's INSERT authenticates the team."""
        try:
            body = read_body(req, self.schema, self.deps.settings.max_body_bytes) if self.schema else None
        except Problem:
            # An unknown token is answered before a bad body, as on the lookup-first path.
            writer(req, session, slug)
            raise
        try:
            self._accept(req, resp, competition, body, None, token_hash(token))
        except CallerUnknown:
            # Answers 401, 403 or 404 as the lookup-first path does; a team it does find means the
            # remembered competition id was stale, so the write goes through with the one it found.
            found, team = writer(req, session, slug)
            _COMPETITION_IDS[slug] = found.id
            self._accept(req, resp, found, body, team)

    def _accept(self, req: falcon.Request, resp: falcon.Response, competition: CompetitionRef, body: Any,
                team: TeamRef | None, digest: bytes | None = None) -> None:
        accept_job(req, resp, self.deps, competition=competition, kind=self.kind.name,
                   queue=self.kind.queue(self.deps.settings, competition.id, self.question(body)),
                   payload=self.payload(body),
                   owner_hash=team.token_hash if team is not None else digest or b"",
                   team_id=team.id if team is not None else None, find_team=team is None)


class Claims(TeamWrite):
    kind = CLAIM
    schema = ClaimQuestion

    def question(self, body: ClaimQuestion) -> str:
        return body.question_id

    def payload(self, body: ClaimQuestion) -> dict[str, Any]:
        return {"questionId": body.question_id}

    @writes_one_statement
    def on_post(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        self.write(req, resp, slug)


class Submissions(TeamWrite):
    kind = SUBMIT
    schema = SubmitAnswer

    def question(self, body: SubmitAnswer) -> str:
        return body.question_id

    def payload(self, body: SubmitAnswer) -> dict[str, Any]:
        return {"questionId": body.question_id, "answer": body.answer}

    def folds_lookup(self) -> bool:
        # The wrong-answer limit is counted per team, before the job exists.
        return not self.deps.settings.wrong_answer_limit

    def check(self, team: TeamRef) -> None:
        limit = self.deps.settings.wrong_answer_limit
        if limit:
            wrong, reset = self.deps.live.wrong_answers(team.id)
            if wrong >= limit:
                raise too_many(reset, f"more than {limit} wrong answers this minute; wait before answering again")

    @writes_one_statement
    def on_post(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        self.write(req, resp, slug)


class MysteryBoxes(TeamWrite):
    kind = MYSTERY_BUY
    schema = BuyMysteryBox

    def payload(self, body: BuyMysteryBox) -> dict[str, Any]:
        return {"difficulty": body.difficulty}

    @writes_one_statement
    def on_post(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        self.write(req, resp, slug)


class CurrentMysteryBox(TeamWrite):
    kind = MYSTERY_FORFEIT

    @writes_one_statement
    def on_delete(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        self.write(req, resp, slug)


class JobItem:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: uuid.UUID) -> None:
        session: Session = req.context.session
        token = bearer(req)
        if token is None:
            raise Problem(falcon.HTTP_401, "unauthorized", "Authentication required",
                          "send the teamToken (or the organiser token) as a Bearer token",
                          headers={"WWW-Authenticate": 'Bearer realm="quiz"'})
        job = session.execute(JOB_FOR_VIEW, {"job_id": job_id}).first()
        digest = token_hash(token)
        if job is not None and (is_admin(token, self.deps.settings.admin_token) or job.owner_hash == digest):
            write_json(resp, job_view(job))
            return
        known = session.scalar(select(exists().where(Job.owner_hash == digest))) or session.scalar(
            select(exists().where(Team.token_hash == digest)))
        if not known and not is_admin(token, self.deps.settings.admin_token):
            raise Problem(falcon.HTTP_401, "unauthorized", "Authentication required", "the token is not valid",
                          headers={"WWW-Authenticate": 'Bearer realm="quiz"'})
        # Someone else's job is indistinguishable from no job.
        raise Problem(falcon.HTTP_404, "job-not-found", "Job not found", f"there is no job {job_id} of yours")


class Leaderboard:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session: Session = req.context.session
        competition = get_competition(session, slug)
        limit, offset = page_params(req, default=competition.leaderboard_size, maximum=500)
        now = utcnow()
        frozen = is_frozen(competition.freeze_at, now)
        organiser = is_admin(bearer(req), self.deps.settings.admin_token)
        if frozen and not organiser:
            assert competition.freeze_at is not None
            board = frozen_board(session, FrozenBoards(self.deps.live), competition.id, competition.freeze_at, now)
            rows = board[offset:offset + limit]
        else:
            rows = leaderboard(session, competition.id, limit, offset)
        write_json(resp, {
            "competition": competition.slug,
            "state": competition.state,
            "frozen": frozen,
            "frozenAt": iso(competition.freeze_at) if frozen and competition.freeze_at else None,
            "leaderboard": rows,
            "nextCursor": next_cursor(offset, limit, len(rows)),
            "at": iso(utcnow()),
        })


def board_view(q: Question, claimed: bool) -> dict[str, Any]:
    return {
        "questionId": q.code,
        "points": q.points,
        "difficulty": q.difficulty,
        "category": q.category,
        "claimed": claimed,
    }
