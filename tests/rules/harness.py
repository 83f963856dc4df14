"""Run game rules in-process, on one test's session, as a consumer would run them.

A ``Game`` makes rows (competitions, questions, teams, claims, boxes), records a job with the
payload and queue the API would give it, and applies it the way ``workers.jobs`` applies a job
of a batch: teams locked and the clock read first, a savepoint unless the rule writes once, a
refusal turned into the job's error and, for an organiser's job, a ``refused`` audit row. After
every job it checks the invariants ``manage.py check`` checks (the ledger first of all), so
every test is also a ledger test.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, null, select, text
from sqlalchemy.orm import Session

import workers.rules as rules
from models.check import check_competition
from models.kinds import KINDS
from models.names import name_key, normalise_name
from models.tables import (
    AuditEntry,
    Claim,
    Competition,
    Job,
    MysteryBox,
    Question,
    ScoreEvent,
    Submission,
    Team,
)
from settings import Settings

# -- what the API and the consumer decide about a job: the registry of job kinds ------------------


# The kinds an organiser's token owns (a claim release is one when the organiser releases it).
ORGANISER_KINDS = frozenset({"adjust", "team_update", "claim_release"})


def queue_for(settings: Settings, competition_id: int, kind: str, payload: dict[str, Any]) -> str:
    """The queue the API (or the sweeper) records a job of this kind on."""
    return KINDS[kind].queue(settings, competition_id, payload.get("questionId"))


def needs_savepoint(kind: str) -> bool:
    """Whether the consumer applies this kind inside a savepoint (a refusal is then undone)."""
    return KINDS[kind].savepoint


# ---------------------------------------------------------------------------------------------

ADMIN_TOKEN = "rules-admin-token"
# Every table a rule writes, compared whole (as JSON rows) before and after a refusal.
_STATE_TABLES = ("competitions", "teams", "questions", "claims", "claim_releases", "submissions", "mystery_boxes",
                 "score_events")

_NEWEST_LEDGER_ROW_DISAGREES = text("""
    SELECT t.id, t.points, e.points_after
      FROM teams t JOIN score_events e ON e.id = (SELECT max(id) FROM score_events WHERE team_id = t.id)
     WHERE t.competition_id = :c AND t.points <> e.points_after
""")


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass
class Outcome:
    """A job after the rule ran: its result or its refusal, and what it would announce."""

    job: Job
    result: dict[str, Any] | None
    error: rules.GameError | None
    outbox: rules.Outbox

    @property
    def code(self) -> str | None:
        return None if self.error is None else self.error.code

    @property
    def ok(self) -> dict[str, Any]:
        """The result; fails the test with the refusal if there was one."""
        assert self.error is None, f"{self.job.kind} was refused: {self.error.code}: {self.error.message}"
        assert self.result is not None
        return self.result


class Game:
    """Factories and a job runner on one test's session."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self._slugs = 0

    # -- rows ------------------------------------------------------------------------------

    def competition(self, **values: Any) -> Competition:
        self._slugs += 1
        values.setdefault("state", "running")
        # A bare None would let the server default in (claim_timeout_seconds is 600 unless NULL).
        values = {name: null() if value is None else value for name, value in values.items()}
        competition = Competition(slug=f"rules-{uuid.uuid4().hex[:10]}", title=f"Rules {self._slugs}", **values)
        self.session.add(competition)
        self.session.flush()
        self.session.refresh(competition)
        return competition

    def question(self, competition: Competition, code: str, *, answer: str = "42", points: int = 100,
                 kind: str = "board", difficulty: str = "MEDIUM", **values: Any) -> Question:
        question = Question(competition_id=competition.id, code=code, text=f"What is {code}?",
                            options=["41", "42", "43"], answer=answer, points=points, kind=kind,
                            difficulty=difficulty, **values)
        self.session.add(question)
        self.session.flush()
        return question

    def mystery(self, competition: Competition, code: str, difficulty: str = "EASY", *,
                answer: str = "42") -> Question:
        return self.question(competition, code, answer=answer, points=0, kind="mystery", difficulty=difficulty)

    def team(self, competition: Competition, name: str = "", *, points: int | None = None,
             deadline: datetime | None = None, disqualified: bool = False) -> Team:
        """A registered team. ``points`` is its starting score, so the ledger stays balanced."""
        name = normalise_name(name or f"Team {uuid.uuid4().hex[:6]}")
        start = competition.starting_points if points is None else points
        team = Team(competition_id=competition.id, name=name, name_key=name_key(name), members=[],
                    token_hash=secrets.token_bytes(32), starting_points=start, points=start, deadline=deadline,
                    disqualified=disqualified)
        self.session.add(team)
        self.session.flush()
        self.session.refresh(team)
        return team

    def claim(self, team: Team, question: Question, *, claimed_at: datetime | None = None) -> Claim:
        """A claim made directly, e.g. one taken long ago."""
        claim = Claim(competition_id=team.competition_id, question_id=question.id, team_id=team.id)
        if claimed_at is not None:
            claim.claimed_at = claimed_at
        self.session.add(claim)
        self.session.flush()
        self.session.refresh(claim)
        return claim

    def now(self) -> datetime:
        """The database's ``now()``: the start of the test's transaction, and every default timestamp."""
        value = self.session.scalar(select(func.now()))
        assert value is not None
        return value

    def later(self, seconds: float) -> datetime:
        return self.now() + timedelta(seconds=seconds)

    # -- jobs ------------------------------------------------------------------------------

    def job(self, competition: Competition, kind: str, payload: dict[str, Any], team: Team | None = None, *,
            created_at: datetime | None = None, owner_hash: bytes | None = None) -> Job:
        """A job row as the API (or the sweeper) records it: a team's write is owned by its token, an
        organiser's by the admin token, a registration by the token it will hand out, a timeout's
        or a disqualification's by the system."""
        if owner_hash is None:
            if kind == "mystery_expire" or (kind == "claim_release" and payload.get("reason") != "organiser"):
                owner_hash = rules.SYSTEM_OWNER
            elif kind in ORGANISER_KINDS:
                owner_hash = token_hash(ADMIN_TOKEN)
            elif team is not None:
                owner_hash = team.token_hash
            else:
                owner_hash = secrets.token_bytes(32)
        job = Job(id=uuid.uuid4(), competition_id=competition.id, kind=kind,
                  queue=queue_for(self.settings, competition.id, kind, payload),
                  team_id=None if team is None else team.id, owner_hash=owner_hash, payload=payload)
        if created_at is not None:
            job.created_at = created_at
        self.session.add(job)
        self.session.flush()
        self.session.refresh(job)
        return job

    def apply(self, job: Job) -> Outcome:
        """Apply one recorded job as a consumer's batch of one would, then check the invariants."""
        (outcome,) = self.apply_batch([job])
        return outcome

    def apply_batch(self, jobs: list[Job]) -> list[Outcome]:
        """Apply jobs of one queue in one batch, as ``workers.jobs`` does: their teams locked and
        loaded once up front, then each job in order of its createdAt; the invariants after each."""
        session = self.session
        # A batch starts on a fresh session: nothing cached from an earlier batch or a factory.
        session.flush()
        session.expire_all()
        session.info.pop(rules.BATCH_CLOCK, None)
        session.info.pop(rules.BATCH_TEAMS, None)
        session.info[rules.SETTINGS] = self.settings
        batch = sorted(jobs, key=lambda j: j.created_at)
        rules.lock_teams(session, {j.team_id for j in batch if j.team_id is not None})
        return [self._apply_one(job) for job in batch]

    def _apply_one(self, job: Job) -> Outcome:
        session = self.session
        competition = session.get(Competition, job.competition_id)
        assert competition is not None
        rule = getattr(rules, job.kind)
        outbox = rules.Outbox()
        result: dict[str, Any] | None = None
        error: rules.GameError | None = None
        try:
            if needs_savepoint(job.kind):
                with session.begin_nested():
                    result = rule(session, competition, job, outbox)
            else:
                result = rule(session, competition, job, outbox)
        except rules.GameError as refusal:
            error = refusal
        if error is None:
            job.status, job.result = "succeeded", result
            if job.kind == "register":
                assert result is not None
                job.team_id = result["teamId"]
        else:
            # What the consumer keeps of a refusal: the job's error and, for an organiser, the audit.
            outbox = rules.Outbox()
            job.status, job.error = "failed", {"code": error.code, "message": error.message}
            action = rules.audited_action(job)
            if action is not None:
                rules.audit(session, job, action[0], action[1], None, {"request": job.payload, "error": job.error},
                            "refused")
        session.flush()
        self.check_invariants(competition)
        return Outcome(job, result, error, outbox)

    def run(self, competition: Competition, kind: str, payload: dict[str, Any], team: Team | None = None, *,
            created_at: datetime | None = None) -> Outcome:
        return self.apply(self.job(competition, kind, payload, team, created_at=created_at))

    def refused(self, competition: Competition, kind: str, payload: dict[str, Any], team: Team | None = None, *,
                created_at: datetime | None = None) -> Outcome:
        """Run a job that must be refused, and show it changed no game state."""
        job = self.job(competition, kind, payload, team, created_at=created_at)
        before = self.state(competition, job)
        outcome = self.apply(job)
        assert outcome.error is not None, f"{kind} {payload} was applied: {outcome.result}"
        assert self.state(competition, job) == before, f"{kind} refused with {outcome.code} but changed the game"
        return outcome

    # -- reading -----------------------------------------------------------------------------

    def state(self, competition: Competition, job: Job) -> dict[str, Any]:
        """Every game row of the competition, and the jobs other than ``job`` (a rule may create some)."""
        snapshot: dict[str, Any] = {}
        for table in _STATE_TABLES:
            column = "id" if table == "competitions" else "competition_id"
            snapshot[table] = self.session.scalars(text(
                f"SELECT to_jsonb(t) FROM {table} t WHERE {column} = :c ORDER BY id"), {"c": competition.id}).all()
        snapshot["jobs"] = self.session.scalars(
            select(Job.id).where(Job.competition_id == competition.id, Job.id != job.id).order_by(Job.id)).all()
        return snapshot

    def check_invariants(self, competition: Competition) -> None:
        """What ``manage.py check`` checks, and that each team's newest ledger row shows its points."""
        found = [str(f) for f in check_competition(self.session, None, competition, stuck_after=10**8)]
        found += [
            f"team {team_id} has {points} points, its newest ledger row says {after}"
            for team_id, points, after in self.session.execute(_NEWEST_LEDGER_ROW_DISAGREES, {"c": competition.id})
        ]
        assert not found, "\n".join(found)

    def points(self, team: Team) -> int:
        points = self.session.scalar(select(Team.points).where(Team.id == team.id))
        assert points is not None
        return points

    def ledger(self, team: Team) -> list[tuple[int, str, str | None]]:
        rows = self.session.execute(select(ScoreEvent.delta, ScoreEvent.reason, ScoreEvent.reference)
                                    .where(ScoreEvent.team_id == team.id).order_by(ScoreEvent.id))
        return [(delta, reason, reference) for delta, reason, reference in rows]

    def claims(self, competition: Competition) -> dict[str, int]:
        """Question code -> the team holding it."""
        rows = self.session.execute(select(Question.code, Claim.team_id).join(Claim, Claim.question_id == Question.id)
                                    .where(Question.competition_id == competition.id))
        return {code: team_id for code, team_id in rows}

    def boxes(self, team: Team) -> list[MysteryBox]:
        return list(self.session.scalars(select(MysteryBox).where(MysteryBox.team_id == team.id)
                                         .order_by(MysteryBox.id)))

    def submissions(self, team: Team) -> list[Submission]:
        return list(self.session.scalars(select(Submission).where(Submission.team_id == team.id)
                                         .order_by(Submission.id)))

    def audit(self, competition: Competition) -> list[AuditEntry]:
        return list(self.session.scalars(select(AuditEntry).where(AuditEntry.competition_id == competition.id)
                                         .order_by(AuditEntry.id)))

    def created_jobs(self, competition: Competition) -> Iterator[Job]:
        """Jobs the rules recorded themselves (owned by the system)."""
        yield from self.session.scalars(select(Job).where(Job.competition_id == competition.id,
                                                          Job.owner_hash == rules.SYSTEM_OWNER).order_by(Job.id))


def registration(name: str, *, code: str | None = None, members: tuple[str, ...] = (),
                 email: str | None = None) -> dict[str, Any]:
    """A register job's payload as the API stores it: names already in their normal form."""
    payload: dict[str, Any] = {"teamName": normalise_name(name), "members": [normalise_name(m) for m in members],
                               "email": email}
    if code is not None:
        payload["registrationCode"] = code
    return payload
