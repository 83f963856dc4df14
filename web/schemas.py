"""Request bodies, one msgspec Struct per body. camelCase on the wire."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Difficulty = Literal["EASY", "MEDIUM", "HARD"]
Kind = Literal["board", "mystery"]
State = Literal["draft", "open", "running", "paused", "finished"]

# PostgreSQL text cannot hold NUL, so it is refused at the edge with a field-level error.
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL)]
Code = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
Slug = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9\-]*$")]
Email = Annotated[str, Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Points = Annotated[int, Meta(ge=0, le=1_000_000)]
AnswerText = Annotated[str, Meta(min_length=1, max_length=1000, pattern=NO_NUL)]
Text = Annotated[str, Meta(min_length=1, max_length=5000, pattern=NO_NUL)]
Option = Annotated[str, Meta(max_length=1000, pattern=NO_NUL)]
Category = Annotated[str, Meta(max_length=100, pattern=NO_NUL)]
Title = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]


class Body(msgspec.Struct, rename="camel", kw_only=True):
    pass


RegistrationCode = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]


class RegisterTeam(Body, kw_only=True):
    team_name: Name
    members: Annotated[list[Name], Meta(max_length=20)] = []
    email: Email | None = None
    # Required when the competition has a registration code.
    registration_code: RegistrationCode | None = None


class ClaimQuestion(Body, kw_only=True):
    question_id: Code


class SubmitAnswer(Body, kw_only=True):
    question_id: Code
    answer: AnswerText


class BuyMysteryBox(Body, kw_only=True):
    difficulty: Difficulty


class PerDifficulty(msgspec.Struct, rename="upper", forbid_unknown_fields=True):
    easy: Points | None = None
    medium: Points | None = None
    hard: Points | None = None


class CompetitionSettings(Body, kw_only=True):
    title: Title | None = None
    starting_points: Points | None = None
    max_open_claims: Annotated[int, Meta(ge=1, le=100)] | None = None
    time_limit_seconds: Annotated[int, Meta(ge=1, le=7 * 24 * 3600)] | None = None
    wrong_answer_penalty: Points | None = None
    deadline_bonus_seconds: Annotated[int, Meta(ge=0, le=24 * 3600)] | None = None
    leaderboard_size: Annotated[int, Meta(ge=1, le=100)] | None = None
    mystery_prices: PerDifficulty | None = None
    mystery_rewards: PerDifficulty | None = None
    # null: claims never expire; absent: unchanged (600 s for a new competition).
    claim_timeout_seconds: Annotated[int, Meta(ge=10, le=7 * 24 * 3600)] | msgspec.UnsetType | None = msgspec.UNSET
    # null: registration is open to anyone; absent: unchanged.
    registration_code: RegistrationCode | msgspec.UnsetType | None = msgspec.UNSET


class CreateCompetition(CompetitionSettings, kw_only=True):
    slug: Slug
    title: Title  # type: ignore[assignment]


class UpdateCompetition(CompetitionSettings, kw_only=True):
    state: State | None = None
    # null lifts the freeze (revealing the standings); absent leaves it as it is.
    freeze_at: datetime | msgspec.UnsetType | None = msgspec.UNSET
    freeze: bool | None = None


class NewQuestion(Body, kw_only=True):
    question_id: Code
    question: Text
    answer: AnswerText
    points: Points = 100
    options: Annotated[list[Option], Meta(max_length=20)] = []
    difficulty: Difficulty = "MEDIUM"
    category: Category | None = None
    kind: Kind = "board"


NewQuestions = NewQuestion | Annotated[list[NewQuestion], Meta(min_length=1, max_length=5000)]


class TeamPatch(Body, kw_only=True):
    team_name: Name | None = None
    disqualified: bool | None = None


class AdjustPoints(Body, kw_only=True):
    delta: Annotated[int, Meta(ge=-1_000_000, le=1_000_000)]
    reason: Annotated[str, Meta(min_length=1, max_length=500, pattern=NO_NUL)]


class QuestionPatch(Body, kw_only=True):
    question: Text | None = None
    answer: AnswerText | None = None
    points: Points | None = None
    options: Annotated[list[Option], Meta(max_length=20)] | None = None
    difficulty: Difficulty | None = None
    category: Category | None = None
    kind: Kind | None = None
