"""The game rules. Plain functions on a session: they never commit, never publish, and
report refusals as ``GameError`` with a stable code. Side effects they want after commit
go into the ``Outbox``."""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    LargeBinary,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    false,
    func,
    insert,
    literal_column,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value

from models import events
from models.kinds import (
    ADJUST,
    CLAIM,
    CLAIM_RELEASE,
    KINDS,
    MYSTERY_BUY,
    MYSTERY_EXPIRE,
    MYSTERY_FORFEIT,
    REGISTER,
    SUBMIT,
    TEAM_UPDATE,
    JobKind,
)
from models.live import iso
from models.names import name_key
from models.ranking import rank_of
from models.tables import (
    AuditEntry,
    Claim,
    ClaimRelease,
    Competition,
    Job,
    MysteryBox,
    Question,
    ScoreEvent,
    Submission,
    Team,
)
from settings import Settings


class GameError(Exception):
    """A rule refused the action; the job fails with this code and nothing it did is kept."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ScoreChange:
    team: Team
    delta: int
    reason: str
    rank: int | None
    # The team's points right after this change; the team object ends the batch with its last.
    points: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        self.points = self.team.points
        self.name = self.team.name


@dataclass
class Outbox:
    """What the job wants announced once its transaction has committed."""

    scores: list[ScoreChange] = field(default_factory=list)
    claimed: list[events.Claim] = field(default_factory=list)
    deadlines: list[Team] = field(default_factory=list)
    standings: list[Team] = field(default_factory=list)
    # Board questions back on the board, announced (coalesced, in order with claims) as question_released.
    released: list[events.Release] = field(default_factory=list)
    # (job id, kind, queue): jobs this one created, to be sent to their queues after the commit.
    enqueue: list[tuple[str, str, str]] = field(default_factory=list)


Rule = Callable[[Session, Competition, Job, Outbox], dict[str, Any]]
# Each kind's implementation, filled by @rule as this module is imported.
RULES: dict[str, Rule] = {}


def rule(kind: JobKind) -> Callable[[Rule], Rule]:
    """Attach a function as the rule of ``kind`` (declared, with its queue family and whether it
    runs in a savepoint, in ``models.kinds``)."""

    def register_rule(function: Rule) -> Rule:
        if kind.name in RULES:
            raise RuntimeError(f"job kind {kind.name!r} has two rules: {RULES[kind.name].__name__} and "
                               f"{function.__name__}")
        if KINDS.get(kind.name) is not kind:
            raise RuntimeError(f"job kind {kind.name!r} is not declared in models.kinds")
        RULES[kind.name] = function
        return function

    return register_rule


def check_rules() -> None:
    """Every declared kind has exactly one rule (a worker refuses to start otherwise)."""
    missing = sorted(set(KINDS) - set(RULES))
    if missing:
        raise RuntimeError(f"job kind(s) without a rule in workers.rules: {', '.join(missing)}")


_SPACES = re.compile(r"\s+")


def normalise_answer(answer: str) -> str:
    return _SPACES.sub(" ", answer).strip().casefold()


def answer_matches(given: str, expected: str) -> bool:
    return normalise_answer(given) == normalise_answer(expected)


# Where lock_teams leaves the database clock and the locked teams for the rest of the batch.
BATCH_CLOCK = "quiz.batch_clock"
BATCH_TEAMS = "quiz.batch_teams"
# Where the worker leaves its Settings (rules that create jobs need the queue routing).
SETTINGS = "quiz.settings"
# The owner of jobs the system makes (claim expiry, releases after a disqualification): no
# bearer token hashes to it, so no client can read them.
SYSTEM_OWNER = bytes(32)
ORGANISER = "admin"


def _now(session: Session) -> datetime:
    """The database clock of the batch (read with the team locks), for when a box was closed."""
    now = session.info.get(BATCH_CLOCK)
    if now is None:
        now = session.info[BATCH_CLOCK] = session.scalar(select(func.clock_timestamp()))
    return now


def _ahead_of_updated_row() -> Any:
    """How many visible teams rank above the row an UPDATE on teams has just written.

    Used in that UPDATE's RETURNING: the subquery sees the other teams as they were before the
    statement (this transaction's earlier changes included), the outer ``teams`` is the new row.
    """
    other = aliased(Team)
    return (
        select(func.count())
        .select_from(other)
        .where(
            other.competition_id == Team.competition_id,
            other.disqualified == false(),
            other.id != Team.id,
            or_(
                other.points > Team.points,
                and_(other.points == Team.points, tuple_(other.points_at, other.id) < tuple_(Team.points_at, Team.id)),
            ),
        )
        .correlate(Team)
        .scalar_subquery()
    )


def _move_points_statement() -> Any:
    """Move a team's points, write the ledger row and read the new rank, in one statement.

    Built once: the hot statements of the rules are constructed at import and run with bound
    parameters, as building a statement like this costs more CPU than running it.
    """
    delta = bindparam("delta", type_=Integer)
    moved = (
        update(Team)
        .where(Team.id == bindparam("team_id"), Team.points + delta >= 0)
        .values(
            points=Team.points + delta,
            points_at=func.clock_timestamp(),
            points_version=Team.points_version + 1,
        )
        .returning(Team.competition_id, Team.id, Team.points, Team.points_at, Team.points_version,
                   _ahead_of_updated_row().label("ahead"))
        .cte("moved")
    )
    ledger = (
        insert(ScoreEvent)
        .from_select(
            ["competition_id", "team_id", "delta", "points_after", "reason", "reference"],
            select(moved.c.competition_id, moved.c.id, delta, moved.c.points, bindparam("reason", type_=Text),
                   bindparam("reference", type_=Text)),
        )
        .cte("ledger")
    )
    return select(moved.c.points, moved.c.points_at, moved.c.points_version, moved.c.ahead).add_cte(ledger)


_MOVE_POINTS = _move_points_statement()


def change_points(session: Session, team: Team, delta: int, reason: str, reference: str | None,
                  outbox: Outbox) -> Team:
    """Move a team's points with one atomic statement that also writes the ledger and reads the rank."""
    row = session.execute(
        _MOVE_POINTS, {"team_id": team.id, "delta": delta, "reason": reason, "reference": reference}
    ).one_or_none()
    if row is None:
        raise GameError("insufficient_points", f"this costs {-delta} points and the team has fewer")
    # Committed values: the row is already written, so the ORM must not flush it again.
    set_committed_value(team, "points", row.points)
    set_committed_value(team, "points_at", row.points_at)
    set_committed_value(team, "points_version", row.points_version)
    outbox.scores.append(ScoreChange(team=team, delta=delta, reason=reason, rank=row.ahead + 1))
    return team


def _require_running(competition: Competition) -> None:
    if competition.state != "running":
        raise GameError("competition_not_running", f"the competition is {competition.state}, not running")


def _require_active(team: Team, job: Job) -> None:
    if team.disqualified:
        raise GameError("team_disqualified", "the team is disqualified")
    # Judged by when the job was accepted, not by when a consumer gets to it: a backlog, a retry
    # or a sweeper re-send must never turn an answer sent in time into a late one.
    if team.deadline is not None and job.created_at > team.deadline:
        raise GameError("deadline_passed", "the team's time is up")


def _lock_team(session: Session, team_id: int) -> Team:
    # lock_teams has locked and loaded every team of the batch, so this needs no round trip; the
    # lock is what serialises rules that read-then-write team data from different queues (the
    # claim limit, boxes). An object expired by a rolled-back savepoint reloads on first use.
    team = session.info.get(BATCH_TEAMS, {}).get(team_id)
    if team is None:
        team = session.execute(select(Team).where(Team.id == team_id).with_for_update(key_share=True)).scalar_one()
    return team


_LOCK_TEAMS = (
    select(Team, func.clock_timestamp())
    .where(Team.id.in_(bindparam("ids", expanding=True)))
    .order_by(Team.id)
    .with_for_update(key_share=True, of=Team)
)


def lock_teams(session: Session, team_ids: set[int]) -> None:
    """Lock and load a batch's teams up front, in id order, so two workers can never deadlock.

    NO KEY UPDATE leaves the API's job inserts (whose foreign key takes KEY SHARE) unblocked.
    The same round trip reads the database clock the batch's deadline checks use.
    """
    if team_ids:
        rows = session.execute(_LOCK_TEAMS, {"ids": sorted(team_ids)}).all()
        if rows:
            session.info[BATCH_CLOCK] = rows[0][1]
        # Held here because the session's identity map only keeps weak references.
        session.info[BATCH_TEAMS] = {team.id: team for team, _ in rows}


def _question_view(q: Question) -> dict[str, Any]:
    return {"questionId": q.code, "question": q.text, "options": list(q.options), "points": q.points}


# -- registration ---------------------------------------------------------------------


# Built once; ``limit`` NULL (no time limit) makes the deadline NULL.
_INSERT_TEAM = (
    pg_insert(Team.__table__)
    .values(
        competition_id=bindparam("competition_id"),
        name=bindparam("name"),
        name_key=bindparam("name_key"),
        members=bindparam("members", type_=JSONB),
        email=bindparam("email"),
        token_hash=bindparam("token_hash", type_=LargeBinary),
        starting_points=bindparam("points", type_=Integer),
        points=bindparam("points", type_=Integer),
        points_at=func.clock_timestamp(),
        deadline=func.clock_timestamp() + cast(bindparam("limit"), Integer)
        * literal_column("interval '1 second'"),
    )
    .on_conflict_do_nothing()
    .returning(*Team.__table__.c)
)


@rule(REGISTER)
def register(session: Session, competition: Competition, job: Job, outbox: Outbox) -> dict[str, Any]:
    if competition.state not in ("open", "running"):
        raise GameError("registration_closed", f"registration is closed while the competition is {competition.state}")
    payload = job.payload
    expected = competition.registration_code
    given = payload.get("registrationCode") or ""
    if expected is not None and not hmac.compare_digest(given.encode(), expected.encode()):
        raise GameError("registration_code_invalid", "the registration code is missing or wrong")
    name = payload["teamName"]
    row = session.execute(_INSERT_TEAM, {
        "competition_id": competition.id, "name": name, "name_key": name_key(name),
        "members": payload.get("members", []), "email": payload.get("email"), "token_hash": job.owner_hash,
        "points": competition.starting_points, "limit": competition.time_limit_seconds or None,
    }).one_or_none()
    # A plain entity from the returned row: nothing in the batch writes it again, so it needs no
    # place in the session (the ORM's INSERT path costs more CPU than the rest of the job).
    team = None if row is None else Team(**row._mapping)
    if team is None:
        # Any conflict: the token hash is 256 random bits, so it is the name (or a look-alike).
        raise GameError("team_name_taken", f"a team called {name!r} (or one that looks the same) is registered")
    deadline = team.deadline
    # A count in PostgreSQL is O(teams) per registration; the rank of a newcomer is read from the
    # leaderboard cache when it is announced instead.
    outbox.scores.append(ScoreChange(team=team, delta=0, reason="registered", rank=None))
    return {
        "teamId": team.id,
        "teamName": team.name,
        "points": team.points,
        "registered": True,
        "deadline": iso(deadline) if deadline else None,
    }


# -- the board ------------------------------------------------------------------------


_HOLDER = select(Claim.team_id).where(Claim.question_id == Question.id).correlate(Question).scalar_subquery()
_THIS_QUESTION = and_(Question.competition_id == bindparam("competition_id"), Question.code == bindparam("code"))
# A submission looks up the question and who holds it; a claim also counts the team's
# unanswered claims. One round trip each.
_CLAIMED_AT = select(Claim.claimed_at).where(Claim.question_id == Question.id).correlate(Question).scalar_subquery()
_SUBMIT_LOOKUP = select(Question, _HOLDER.label("holder"), _CLAIMED_AT.label("claimed_at")).where(_THIS_QUESTION)
_CLAIM_LOOKUP = select(
    Question,
    _HOLDER.label("holder"),
    select(func.count())
    .select_from(Claim)
    .where(
        Claim.team_id == bindparam("team_id"),
        ~exists().where(Submission.team_id == Claim.team_id, Submission.question_id == Claim.question_id),
    )
    .scalar_subquery()
    .label("open_claims"),
).where(_THIS_QUESTION)
_INSERT_SUBMISSION = (
    pg_insert(Submission.__table__)
    .values({name: bindparam(name) for name in
             ("competition_id", "team_id", "question_id", "answer", "correct", "points_awarded")})
    .on_conflict_do_nothing()
    .returning(Submission.__table__.c.id)
)
_INSERT_CLAIM = (
    pg_insert(Claim.__table__)
    .values(competition_id=bindparam("competition_id"), question_id=bindparam("question_id"),
            team_id=bindparam("team_id"))
    .on_conflict_do_nothing()
    .returning(Claim.__table__.c.id)
)


def _expired(competition: Competition, since: datetime | None, job: Job) -> bool:
    """Whether a claim (or box) taken at ``since`` had timed out when the job was sent.

    Compared with the job's own createdAt, not the batch clock: a job sent in time stays in
    time however long its queue is.
    """
    timeout = competition.claim_timeout_seconds
    return timeout is not None and since is not None and job.created_at - since > timedelta(seconds=timeout)


def _claim_expired(competition: Competition, code: str) -> GameError:
    return GameError("claim_expired", f"your claim on {code!r} expired after {competition.claim_timeout_seconds} s "
                                      "unanswered and went back to the board")


def _lost_to_expiry(session: Session, team_id: int, question_id: int) -> bool:
    return bool(session.scalar(select(exists().where(
        ClaimRelease.team_id == team_id, ClaimRelease.question_id == question_id, ClaimRelease.reason == "expired"))))


@rule(CLAIM)
def claim(session: Session, competition: Competition, job: Job, outbox: Outbox) -> dict[str, Any]:
    _require_running(competition)
    team = _lock_team(session, job.team_id)
    _require_active(team, job)
    code = job.payload["questionId"]
    row = session.execute(_CLAIM_LOOKUP, {"competition_id": competition.id, "code": code,
                                          "team_id": team.id}).one_or_none()
    if row is None:
        raise GameError("question_not_found", f"there is no question {code!r}")
    question, holder = row.Question, row.holder
    if question.kind != "board":
        raise GameError("question_not_found", f"{question.code!r} is a mystery question, not on the board")
    if holder is not None:
        if holder == team.id:
            raise GameError("question_already_claimed", "your team already holds this question")
        raise GameError("question_already_claimed", f"question {question.code!r} is already claimed")
    if row.open_claims >= competition.max_open_claims:
        raise GameError(
            "claim_limit_reached",
            f"a team may hold {competition.max_open_claims} unanswered claim(s); answer one first",
        )
    claimed = session.scalar(_INSERT_CLAIM, {"competition_id": competition.id, "question_id": question.id,
                                             "team_id": team.id})
    if claimed is None:
        raise GameError("question_already_claimed", f"question {question.code!r} is already claimed")
    outbox.claimed.append(events.Claim(question_id=question.code, team_name=team.name))
    return _question_view(question)


@rule(SUBMIT)
def submit(session: Session, competition: Competition, job: Job, outbox: Outbox) -> dict[str, Any]:
    _require_running(competition)
    team = _lock_team(session, job.team_id)
    _require_active(team, job)
    code = job.payload["questionId"]
    row = session.execute(_SUBMIT_LOOKUP, {"competition_id": competition.id, "code": code}).one_or_none()
    if row is None:
        raise GameError("question_not_found", f"there is no question {code!r}")
    question, holder = row.Question, row.holder
    box: MysteryBox | None = None
    if question.kind == "board":
        if holder != team.id:
            if _lost_to_expiry(session, team.id, question.id):
                raise _claim_expired(competition, question.code)
            raise GameError("question_not_claimed", f"your team has not claimed {question.code!r}")
        if _expired(competition, row.claimed_at, job):
            # Before the sweeper's release has run: the answer came too late all the same.
            raise _claim_expired(competition, question.code)
    else:
        box = session.scalar(
            select(MysteryBox)
            .where(MysteryBox.team_id == team.id, MysteryBox.question_id == question.id)
            .order_by(MysteryBox.id.desc())
            .limit(1)
            .with_for_update()
        )
        if box is not None and box.state == "forfeited" and box.closed_reason == "expired":
            raise _claim_expired(competition, question.code)
        if box is None or box.state == "forfeited":
            raise GameError("question_not_claimed", f"your team has no open mystery box with {question.code!r}")
        if box.state == "answered":
            raise GameError("already_answered", f"your team has already answered {question.code!r}")
        if _expired(competition, box.created_at, job):
            raise _claim_expired(competition, question.code)

    answer = job.payload["answer"]
    correct = answer_matches(answer, question.answer)
    value = box.reward if box is not None else question.points
    earned = value if correct else -min(competition.wrong_answer_penalty, team.points)
    submitted = session.scalar(_INSERT_SUBMISSION, {
        "competition_id": competition.id,
        "team_id": team.id,
        "question_id": question.id,
        "answer": answer,
        "correct": correct,
        "points_awarded": earned,
    })
    if submitted is None:
        raise GameError("already_answered", f"your team has already answered {question.code!r}")
    reason = ("mystery_" if box else "") + ("correct_answer" if correct else "wrong_answer")
    if earned != 0:
        change_points(session, team, earned, reason, f"submission:{submitted}", outbox)
    else:
        outbox.scores.append(ScoreChange(team=team, delta=0, reason=reason, rank=rank_of(session, team)))
    if box is not None:
        box.state = "answered"
        box.closed_at = _now(session)
        if correct and competition.deadline_bonus_seconds and team.deadline is not None:
            team.deadline = team.deadline + timedelta(seconds=competition.deadline_bonus_seconds)
            outbox.deadlines.append(team)
    return {
        "questionId": question.code,
        "correct": correct,
        "pointsEarned": earned,
        "totalPoints": team.points,
        "rank": outbox.scores[-1].rank,
    }


# -- mystery boxes ----------------------------------------------------------------------


def _draw_mystery_statement() -> Any:
    """A random mystery question of the difficulty that no box holds and the team has not answered.

    Reading the whole pool to pick one (``ORDER BY random()``) made a draw cost O(pool) on the
    one queue that serves a competition's boxes. Instead a random id between the pool's lowest
    and highest is drawn, and the first free question from there (wrapping around to the start)
    is taken: an index range scan that usually reads a row or two. Questions that follow a run
    of taken ones are a little likelier; the draw stays unpredictable to the teams.
    """
    in_pool = (
        Question.competition_id == bindparam("competition_id"),
        Question.kind == "mystery",
        Question.difficulty == bindparam("difficulty"),
    )
    free = (
        *in_pool,
        ~exists().where(MysteryBox.question_id == Question.id, MysteryBox.state != "forfeited"),
        ~exists().where(Submission.team_id == bindparam("team_id"), Submission.question_id == Question.id),
    )
    bounds = select(func.min(Question.id).label("lo"), func.max(Question.id).label("hi")).where(*in_pool).cte("bounds")
    # Referenced twice, so PostgreSQL materialises it: one random() per draw.
    start = select(
        cast(bounds.c.lo + func.floor(func.random() * (bounds.c.hi - bounds.c.lo + 1)), BigInteger).label("id")
    ).cte("start")
    start_id = select(start.c.id).scalar_subquery()
    from_start = select(Question.id).where(*free, Question.id >= start_id).order_by(Question.id).limit(1)
    wrapped = select(Question.id).where(*free, Question.id < start_id).order_by(Question.id).limit(1)
    picked = union_all(from_start.subquery().select(), wrapped.subquery().select()).limit(1).subquery()
    return select(Question).where(Question.id == select(picked.c.id).scalar_subquery())


_DRAW_MYSTERY = _draw_mystery_statement()


@rule(MYSTERY_BUY)
def mystery_buy(session: Session, competition: Competition, job: Job, outbox: Outbox) -> dict[str, Any]:
    _require_running(competition)
    team = _lock_team(session, job.team_id)
    _require_active(team, job)
    difficulty = job.payload["difficulty"]
    if session.scalar(select(exists().where(MysteryBox.team_id == team.id, MysteryBox.state == "open"))):
        raise GameError("mystery_already_open", "answer or forfeit your open mystery box first")
    price = competition.mystery_price(difficulty)
    reward = competition.mystery_reward(difficulty)
    if team.points < price:
        raise GameError("insufficient_points", f"a {difficulty} box costs {price} points; the team has {team.points}")
    question = session.scalars(_DRAW_MYSTERY, {"competition_id": competition.id, "difficulty": difficulty,
                                               "team_id": team.id}).first()
    if question is None:
        raise GameError("no_mystery_left", f"no {difficulty} mystery question is left")
    session.execute(
        insert(MysteryBox).values(
            competition_id=competition.id,
            team_id=team.id,
            question_id=question.id,
            difficulty=difficulty,
            price=price,
            reward=reward,
        )
    )
    change_points(session, team, -price, "mystery_box", f"mystery:{question.code}", outbox)
    return {
        "mysteryQuestionId": question.code,
        "question": question.text,
        "options": list(question.options),
        "difficulty": difficulty,
        "potentialPoints": reward,
        "deductedPoints": price,
        "totalPoints": team.points,
    }


@rule(MYSTERY_FORFEIT)
def mystery_forfeit(session: Session, competition: Competition, job: Job, outbox: Outbox) -> dict[str, Any]:
    team = _lock_team(session, job.team_id)
    if team.disqualified:
        raise GameError("team_disqualified", "the team is disqualified")
    box = session.scalar(
        select(MysteryBox).where(MysteryBox.team_id == team.id, MysteryBox.state == "open").with_for_update()
    )
    if box is None:
        raise GameError("no_open_mystery_box", "the team has no open mystery box")
    box.state = "forfeited"
    box.closed_reason = "forfeit"
    box.closed_at = _now(session)
    code = session.scalar(select(Question.code).where(Question.id == box.question_id))
    return {
        "mysteryQuestionId": code,
        "difficulty": box.difficulty,
        "state": "forfeited",
        "deductedPoints": box.price,
        "refundedPoints": 0,
    }


# -- organiser actions ------------------------------------------------------------------


def _target_team(session: Session, competition: Competition, team_id: int) -> Team:
    team = session.execute(
        select(Team).where(Team.id == team_id, Team.competition_id == competition.id).with_for_update(key_share=True)
    ).scalar_one_or_none()
    if team is None:
        raise GameError("team_not_found", f"there is no team {team_id} in this competition")
    return team


def _team_summary(session: Session, team: Team) -> dict[str, Any]:
    return {
        "teamId": team.id,
        "teamName": team.name,
        "points": team.points,
        "disqualified": team.disqualified,
        "rank": None if team.disqualified else rank_of(session, team),
    }


def audit(session: Session, job: Job, action: str, target: str | None, before: dict[str, Any] | None,
          after: dict[str, Any] | None, outcome: str) -> None:
    """The audit row of an organiser's job, in the transaction that applies (or refuses) it."""
    session.add(AuditEntry(competition_id=job.competition_id, actor=ORGANISER, action=action, target=target,
                           before=before, after=after, outcome=outcome, job_id=job.id))


def audited_action(job: Job) -> tuple[str, str | None] | None:
    """The audit action and target of an organiser's job, or None for a team's or the system's."""
    if job.kind == "adjust":
        return "team.adjust", f"team:{job.payload['teamId']}"
    if job.kind == "team_update":
        return "team.update", f"team:{job.payload['teamId']}"
    if job.kind == "claim_release" and job.payload.get("reason") == "organiser":
        return "claim.release", f"question:{job.payload['questionId']}"
    return None


@rule(ADJUST)
def adjust(session: Session, competition: Competition, job: Job, outbox: Outbox) -> dict[str, Any]:
    team = _target_team(session, competition, job.payload["teamId"])
    delta = int(job.payload["delta"])
    reason = job.payload["reason"]
    before = {"points": team.points}
    change_points(session, team, delta, f"adjustment: {reason}", f"adjustment:{job.id}", outbox)
    audit(session, job, "team.adjust", f"team:{team.id}", before, {**job.payload, "points": team.points},
          "applied")
    return {**_team_summary(session, team), "delta": delta, "reason": reason}


@rule(TEAM_UPDATE)
def team_update(session: Session, competition: Competition, job: Job, outbox: Outbox) -> dict[str, Any]:
    team = _target_team(session, competition, job.payload["teamId"])
    before = {"teamName": team.name, "disqualified": team.disqualified}
    reasons = []
    new_name = job.payload.get("teamName")
    if new_name is not None and new_name != team.name:
        key = name_key(new_name)
        taken = session.scalar(
            select(Team.id).where(Team.competition_id == competition.id, Team.name_key == key, Team.id != team.id)
        )
        if taken is not None:
            raise _name_taken(new_name)
        team.name = new_name
        team.name_key = key
        reasons.append("renamed")
    flag = job.payload.get("disqualified")
    released: dict[str, Any] = {}
    if flag is not None and flag != team.disqualified:
        team.disqualified = flag
        reasons.append("disqualified" if flag else "reinstated")
        if flag:
            released = _release_everything_of(session, competition, team, outbox)
    if reasons:
        # A new version makes the leaderboard cache take the new name or visibility.
        team.points_version = team.points_version + 1
        try:
            session.flush()
        except IntegrityError:
            # A registration on another queue took the name since the check above.
            raise _name_taken(new_name or team.name) from None
        outbox.scores.append(ScoreChange(team=team, delta=0, reason=",".join(reasons),
                                         rank=None if team.disqualified else rank_of(session, team)))
    audit(session, job, "team.update", f"team:{team.id}", before, {**job.payload, **released}, "applied")
    return {**_team_summary(session, team), "changes": reasons}


def _name_taken(name: str) -> GameError:
    return GameError("team_name_taken", f"a team called {name!r} (or one that looks the same) is registered")


def _release_everything_of(session: Session, competition: Competition, team: Team,
                           outbox: Outbox) -> dict[str, Any]:
    """A disqualified team's open box is forfeited here (this is its competition queue); its unanswered
    claims are released by jobs on their questions' board queues, serialised with the answers."""
    forfeited = session.scalars(
        update(MysteryBox)
        .where(MysteryBox.team_id == team.id, MysteryBox.state == "open")
        .values(state="forfeited", closed_reason="disqualified", closed_at=_now(session))
        .returning(MysteryBox.id)
    ).all()
    open_claims = session.execute(
        select(Claim.id, Question.code)
        .join(Question, Question.id == Claim.question_id)
        .where(Claim.team_id == team.id,
               ~exists().where(Submission.team_id == team.id, Submission.question_id == Claim.question_id))
    ).all()
    settings: Settings = session.info[SETTINGS]
    for claim_id, code in open_claims:
        schedule_claim_release(session, settings, competition.id, team.id, claim_id, code, "disqualified", outbox)
    return {"forfeitedBoxes": len(forfeited), "releasedClaims": sorted(code for _, code in open_claims)}


_INSERT_SYSTEM_JOB = (
    pg_insert(Job.__table__)
    .values({name: bindparam(name) for name in
             ("id", "competition_id", "kind", "queue", "team_id", "owner_hash", "payload", "idempotency_key")})
    .on_conflict_do_nothing()
    .returning(Job.__table__.c.id)
)


def _schedule(session: Session, outbox: Outbox, *, competition_id: int, kind: str, queue: str, team_id: int,
              payload: dict[str, Any], key: str) -> None:
    # One job per claim or box and reason: the sweeper's next pass finds the key taken.
    created = session.scalar(_INSERT_SYSTEM_JOB, {
        "id": uuid.uuid4(), "competition_id": competition_id, "kind": kind, "queue": queue, "team_id": team_id,
        "owner_hash": SYSTEM_OWNER, "payload": payload, "idempotency_key": key,
    })
    if created is not None:
        outbox.enqueue.append((str(created), kind, queue))


def schedule_claim_release(session: Session, settings: Settings, competition_id: int, team_id: int, claim_id: int,
                           code: str, reason: str, outbox: Outbox) -> None:
    _schedule(session, outbox, competition_id=competition_id, kind=CLAIM_RELEASE.name,
              queue=CLAIM_RELEASE.queue(settings, competition_id, code), team_id=team_id,
              payload={"questionId": code, "claimId": claim_id, "reason": reason}, key=f"release:{claim_id}")


def schedule_box_expiry(session: Session, settings: Settings, competition_id: int, team_id: int, box_id: int,
                        outbox: Outbox) -> None:
    _schedule(session, outbox, competition_id=competition_id, kind=MYSTERY_EXPIRE.name,
              queue=MYSTERY_EXPIRE.queue(settings, competition_id), team_id=team_id,
              payload={"boxId": box_id, "reason": "expired"}, key=f"expire-box:{box_id}")


@rule(CLAIM_RELEASE)
def claim_release(session: Session, competition: Competition, job: Job, outbox: Outbox) -> dict[str, Any]:
    """Put a claimed, unanswered question back on the board (on the question's own board queue,
    so it is serialised with every answer to it)."""
    code = job.payload["questionId"]
    reason = job.payload["reason"]
    row = session.execute(
        select(Claim, Team.name)
        .join(Question, Question.id == Claim.question_id)
        .join(Team, Team.id == Claim.team_id)
        .where(Question.competition_id == competition.id, Question.code == code)
        .with_for_update(of=Claim)
    ).one_or_none()
    if row is None:
        raise GameError("question_not_claimed", f"no team holds {code!r}")
    held, team_name = row
    if job.payload.get("claimId") not in (None, held.id):
        raise GameError("question_not_claimed", f"the claim on {code!r} this job was for has already gone")
    if session.scalar(select(exists().where(Submission.team_id == held.team_id,
                                            Submission.question_id == held.question_id))):
        raise GameError("already_answered", f"{code!r} has been answered; its claim stays")
    if reason == "expired" and not _expired(competition, held.claimed_at, job):
        raise GameError("claim_not_expired", f"the claim on {code!r} has not timed out")
    session.execute(delete(Claim).where(Claim.id == held.id))
    session.add(ClaimRelease(competition_id=competition.id, question_id=held.question_id, team_id=held.team_id,
                             reason=reason, claimed_at=held.claimed_at))
    outbox.released.append(events.Release(question_id=code, reason=reason))
    result = {"questionId": code, "teamId": held.team_id, "teamName": team_name, "reason": reason,
              "claimedAt": iso(held.claimed_at), "released": True}
    if reason == "organiser":
        audit(session, job, "claim.release", f"question:{code}",
              {"questionId": code, "teamId": held.team_id, "teamName": team_name, "claimedAt": iso(held.claimed_at)},
              {"questionId": code, "released": True}, "applied")
    return result


@rule(MYSTERY_EXPIRE)
def mystery_expire(session: Session, competition: Competition, job: Job, outbox: Outbox) -> dict[str, Any]:
    """Forfeit a box left open past the claim timeout (no refund); its question goes back to the pool."""
    box = session.scalar(
        select(MysteryBox)
        .where(MysteryBox.id == job.payload["boxId"], MysteryBox.competition_id == competition.id)
        .with_for_update()
    )
    if box is None or box.state != "open":
        raise GameError("no_open_mystery_box", "the box is no longer open")
    if not _expired(competition, box.created_at, job):
        raise GameError("claim_not_expired", "the box has not timed out")
    box.state = "forfeited"
    box.closed_reason = "expired"
    box.closed_at = _now(session)
    return {"boxId": box.id, "teamId": box.team_id, "state": "forfeited", "reason": "expired", "refundedPoints": 0}


check_rules()
