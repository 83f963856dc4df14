"""Typed SQLAlchemy 2 models. Every invariant of DESIGN.md's data table is a constraint here."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Text,
    Uuid,
    func,
)
from sqlalchemy import (
    text as sql,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from models.kinds import KIND_NAMES

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

COMPETITION_STATES = ("draft", "open", "running", "paused", "finished")
DIFFICULTIES = ("EASY", "MEDIUM", "HARD")
QUESTION_KINDS = ("board", "mystery")
BOX_STATES = ("open", "answered", "forfeited")
JOB_STATUSES = ("queued", "running", "succeeded", "failed")
# The jobs table's CHECK constraint reads the registry; a new kind needs a migration that widens it.
JOB_KINDS = KIND_NAMES
RELEASE_REASONS = ("expired", "disqualified", "organiser")
AUDIT_OUTCOMES = ("applied", "refused")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Competition(Base):
    __tablename__ = "competitions"
    __table_args__ = (
        CheckConstraint(_in("state", COMPETITION_STATES), name="state"),
        CheckConstraint("starting_points >= 0", name="starting_points"),
        CheckConstraint("max_open_claims >= 1", name="max_open_claims"),
        CheckConstraint(
            "price_easy >= 0 AND price_medium >= 0 AND price_hard >= 0"
            " AND reward_easy >= 0 AND reward_medium >= 0 AND reward_hard >= 0",
            name="mystery_money",
        ),
        CheckConstraint("time_limit_seconds IS NULL OR time_limit_seconds > 0", name="time_limit"),
        CheckConstraint("wrong_answer_penalty >= 0", name="penalty"),
        CheckConstraint("leaderboard_size BETWEEN 1 AND 1000", name="leaderboard_size"),
        CheckConstraint("claim_timeout_seconds IS NULL OR claim_timeout_seconds > 0", name="claim_timeout"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    slug: Mapped[str] = mapped_column(Text, unique=True)
    title: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, server_default="draft")
    starting_points: Mapped[int] = mapped_column(Integer, server_default="1000")
    time_limit_seconds: Mapped[int | None] = mapped_column(Integer)
    max_open_claims: Mapped[int] = mapped_column(Integer, server_default="1")
    wrong_answer_penalty: Mapped[int] = mapped_column(Integer, server_default="0")
    deadline_bonus_seconds: Mapped[int] = mapped_column(Integer, server_default="0")
    leaderboard_size: Mapped[int] = mapped_column(Integer, server_default="10")
    price_easy: Mapped[int] = mapped_column(Integer, server_default="50")
    price_medium: Mapped[int] = mapped_column(Integer, server_default="100")
    price_hard: Mapped[int] = mapped_column(Integer, server_default="150")
    reward_easy: Mapped[int] = mapped_column(Integer, server_default="100")
    reward_medium: Mapped[int] = mapped_column(Integer, server_default="200")
    reward_hard: Mapped[int] = mapped_column(Integer, server_default="300")
    freeze_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # An unanswered claim (or open mystery box) older than this goes back; None: never.
    claim_timeout_seconds: Mapped[int | None] = mapped_column(Integer, server_default="600")
    # When set, a registration must carry it (a shared secret handed out in the hall).
    registration_code: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()

    def mystery_price(self, difficulty: str) -> int:
        return int(getattr(self, f"price_{difficulty.lower()}"))

    def mystery_reward(self, difficulty: str) -> int:
        return int(getattr(self, f"reward_{difficulty.lower()}"))


class Team(Base):
    __tablename__ = "teams"
    __table_args__ = (
        # name_key is models.names.name_key(name): NFKC, casefolded, whitespace collapsed.
        Index("uq_teams_competition_id_name_key", "competition_id", "name_key", unique=True),
        Index("ix_teams_ranking", "competition_id", sql("points DESC"), "points_at", "id"),
        CheckConstraint("points >= 0", name="points"),
        CheckConstraint("char_length(name) BETWEEN 1 AND 64", name="name_length"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    competition_id: Mapped[int] = mapped_column(ForeignKey("competitions.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    name_key: Mapped[str] = mapped_column(Text)
    members: Mapped[list[str]] = mapped_column(JSONB, server_default=sql("'[]'::jsonb"))
    email: Mapped[str | None] = mapped_column(Text)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    starting_points: Mapped[int] = mapped_column(Integer)
    points: Mapped[int] = mapped_column(Integer)
    # When the team reached its current score: the ranking tie-breaker.
    points_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Bumped with every points change so out-of-order cache updates can be discarded.
    points_version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disqualified: Mapped[bool] = mapped_column(Boolean, server_default=sql("false"))
    created_at: Mapped[datetime] = _created()


class Question(Base):
    __tablename__ = "questions"
    __table_args__ = (
        Index("uq_questions_competition_id_code", "competition_id", "code", unique=True),
        # With id last, a mystery draw can start at a random id and stop at the first free question.
        Index("ix_questions_mystery_pool", "competition_id", "kind", "difficulty", "id"),
        CheckConstraint(_in("difficulty", DIFFICULTIES), name="difficulty"),
        CheckConstraint(_in("kind", QUESTION_KINDS), name="kind"),
        CheckConstraint("points >= 0", name="points"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    competition_id: Mapped[int] = mapped_column(ForeignKey("competitions.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    options: Mapped[list[str]] = mapped_column(JSONB, server_default=sql("'[]'::jsonb"))
    answer: Mapped[str] = mapped_column(Text)
    points: Mapped[int] = mapped_column(Integer)
    difficulty: Mapped[str] = mapped_column(Text, server_default="MEDIUM")
    category: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text, server_default="board")
    created_at: Mapped[datetime] = _created()


class Claim(Base):
    __tablename__ = "claims"
    __table_args__ = (Index("ix_claims_team_id", "team_id"), Index("ix_claims_claimed_at", "claimed_at"))

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    competition_id: Mapped[int] = mapped_column(ForeignKey("competitions.id", ondelete="CASCADE"))
    question_id: Mapped[int] = mapped_column(ForeignKey("questions.id", ondelete="CASCADE"), unique=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    claimed_at: Mapped[datetime] = _created()


class ClaimRelease(Base):
    """A claim that went back to the board unanswered, so the team's late answer is told why."""

    __tablename__ = "claim_releases"
    __table_args__ = (
        Index("ix_claim_releases_team_id_question_id", "team_id", "question_id"),
        CheckConstraint(_in("reason", RELEASE_REASONS), name="reason"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    competition_id: Mapped[int] = mapped_column(ForeignKey("competitions.id", ondelete="CASCADE"))
    question_id: Mapped[int] = mapped_column(ForeignKey("questions.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(Text)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    released_at: Mapped[datetime] = _created()


class Submission(Base):
    __tablename__ = "submissions"
    __table_args__ = (
        Index("uq_submissions_team_id_question_id", "team_id", "question_id", unique=True),
        Index("ix_submissions_question_id", "question_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    competition_id: Mapped[int] = mapped_column(ForeignKey("competitions.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    question_id: Mapped[int] = mapped_column(ForeignKey("questions.id", ondelete="CASCADE"))
    answer: Mapped[str] = mapped_column(Text)
    correct: Mapped[bool] = mapped_column(Boolean)
    points_awarded: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created()


class MysteryBox(Base):
    __tablename__ = "mystery_boxes"
    __table_args__ = (
        Index("uq_mystery_boxes_one_open_per_team", "team_id", unique=True, postgresql_where=sql("state = 'open'")),
        # A mystery question is out of the pool while a box holds it, and for good once answered.
        Index(
            "uq_mystery_boxes_question_taken",
            "question_id",
            unique=True,
            postgresql_where=sql("state <> 'forfeited'"),
        ),
        Index("ix_mystery_boxes_open_since", "created_at", postgresql_where=sql("state = 'open'")),
        CheckConstraint(_in("state", BOX_STATES), name="state"),
        CheckConstraint(_in("difficulty", DIFFICULTIES), name="difficulty"),
        CheckConstraint("price >= 0 AND reward >= 0", name="money"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    competition_id: Mapped[int] = mapped_column(ForeignKey("competitions.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    question_id: Mapped[int] = mapped_column(ForeignKey("questions.id", ondelete="CASCADE"))
    difficulty: Mapped[str] = mapped_column(Text)
    price: Mapped[int] = mapped_column(Integer)
    reward: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(Text, server_default="open")
    created_at: Mapped[datetime] = _created()
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Why a forfeited box closed: forfeit (the team), expired, disqualified.
    closed_reason: Mapped[str | None] = mapped_column(Text)


class ScoreEvent(Base):
    __tablename__ = "score_events"
    __table_args__ = (
        Index("ix_score_events_team_id", "team_id"),
        Index("ix_score_events_competition_id_created_at", "competition_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    competition_id: Mapped[int] = mapped_column(ForeignKey("competitions.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    delta: Mapped[int] = mapped_column(Integer)
    points_after: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index(
            "uq_jobs_owner_hash_idempotency_key",
            "owner_hash",
            "idempotency_key",
            unique=True,
            postgresql_where=sql("idempotency_key IS NOT NULL"),
        ),
        Index("ix_jobs_competition_id", "competition_id"),
        # Workers take a batch of their own queue's waiting jobs in one transaction.
        Index("ix_jobs_queued_by_queue", "queue", "created_at", postgresql_where=sql("status = 'queued'")),
        # The sweeper's scan: only unfinished jobs are indexed.
        Index("ix_jobs_unfinished", "created_at", postgresql_where=sql("status IN ('queued', 'running')")),
        # An unknown bearer token is looked up by its hash (GET /jobs/{id}, Socket.IO connect).
        Index("ix_jobs_owner_hash", "owner_hash"),
        # The sweeper purges finished jobs past the retention period.
        Index("ix_jobs_finished", "finished_at", postgresql_where=sql("status IN ('succeeded', 'failed')")),
        # A registration has no owner until applied, so its Idempotency-Key is unique per competition.
        Index("uq_jobs_registration_key", "competition_id", "idempotency_key", unique=True,
              postgresql_where=sql("kind = 'register' AND idempotency_key IS NOT NULL")),
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        CheckConstraint(_in("kind", JOB_KINDS), name="kind"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    competition_id: Mapped[int] = mapped_column(ForeignKey("competitions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(Text)
    queue: Mapped[str] = mapped_column(Text)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    # sha256 of the bearer token of whoever may read the job (a registration job has no team yet).
    owner_hash: Mapped[bytes] = mapped_column(LargeBinary)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, server_default="queued")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    # A registration's team token is HMAC(SECRET_KEY, token_seed): random, never from the request,
    # and recoverable for a replay with a high-entropy Idempotency-Key.
    token_seed: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The X-Request-ID of the write that recorded the job: a batch applies jobs of many requests,
    # so the id travels in the row, into the consumer's log lines and the events the job causes.
    request_id: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_competition_id_at", "competition_id", "at"),
        CheckConstraint("outcome IS NULL OR " + _in("outcome", AUDIT_OUTCOMES), name="outcome"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    competition_id: Mapped[int | None] = mapped_column(ForeignKey("competitions.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    target: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Written in the transaction that applied or refused the action (None: rows from before 0006).
    outcome: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    at: Mapped[datetime] = _created()
