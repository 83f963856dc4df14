"""The job kinds, declared once: each kind's name, its queue family, whether its rule runs in a
savepoint, and the Celery task (and so the Flower name) its messages carry.

Everything that lists or routes kinds reads this module: the jobs table's CHECK constraint,
the API's resources (which queue a write goes to), the OpenAPI document, the workers' tasks and
their dispatch (``workers.rules.rule`` attaches each kind's implementation and checks, when a
worker starts, that every kind has exactly one). It imports only ``settings``, so web/ can use it
without importing workers/.

Queues, one consumer each with concurrency 1 (that is what serialises a queue):

- ``registrations``: team sign-ups;
- ``board.N``: claims, answers and claim releases, by a stable hash of (competition, question),
  so everything that happens to one question is serialised;
- ``competition.N``: a competition's mystery boxes and organiser jobs (adjustments, team updates,
  which may forfeit a disqualified team's box), by competition, so two teams never draw the same
  mystery question.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

from settings import Settings

Family = Literal["registrations", "board", "competition"]

REGISTRATIONS = "registrations"
TASK_PREFIX = "quiz.jobs."


def board_queue(settings: Settings, competition_id: int, question_code: str) -> str:
    # crc32 is stable across processes and Python versions, unlike hash().
    key = f"{competition_id}:{question_code.strip().upper()}".encode()
    return f"board.{zlib.crc32(key) % settings.board_queues}"


def competition_queue(settings: Settings, competition_id: int) -> str:
    return f"competition.{competition_id % settings.competition_queues}"


def all_queues(settings: Settings) -> list[str]:
    """Every queue, in the order the launcher starts their consumers."""
    return (
        [REGISTRATIONS]
        + [f"board.{i}" for i in range(settings.board_queues)]
        + [f"competition.{i}" for i in range(settings.competition_queues)]
    )


@dataclass(frozen=True)
class JobKind:
    name: str
    family: Family
    # False only where the rule's one write comes after every check, so a refusal has written
    # nothing and the batch needs no savepoint around it (two round trips fewer per job).
    savepoint: bool
    doc: str

    @property
    def task(self) -> str:
        """The Celery task name, which is what Flower lists the job under."""
        return TASK_PREFIX + self.name

    def queue(self, settings: Settings, competition_id: int, question_code: str | None = None) -> str:
        """The queue a job of this kind goes to; a board kind needs its question's code."""
        if self.family == "registrations":
            return REGISTRATIONS
        if self.family == "board":
            if question_code is None:
                raise ValueError(f"a {self.name} job is routed by its question; give its code")
            return board_queue(settings, competition_id, question_code)
        return competition_queue(settings, competition_id)


REGISTER = JobKind("register", "registrations", savepoint=False, doc="a team signs up")
CLAIM = JobKind("claim", "board", savepoint=False, doc="a team claims a board question")
SUBMIT = JobKind("submit", "board", savepoint=True, doc="a team answers a claimed question or its mystery box")
MYSTERY_BUY = JobKind("mystery_buy", "competition", savepoint=True, doc="a team buys a mystery box")
MYSTERY_FORFEIT = JobKind("mystery_forfeit", "competition", savepoint=True, doc="a team gives up its open box")
ADJUST = JobKind("adjust", "competition", savepoint=True, doc="an organiser moves a team's points")
TEAM_UPDATE = JobKind("team_update", "competition", savepoint=True,
                      doc="an organiser renames, disqualifies or reinstates a team")
CLAIM_RELEASE = JobKind("claim_release", "board", savepoint=True,
                        doc="a claim goes back to the board (timeout, disqualification, organiser)")
MYSTERY_EXPIRE = JobKind("mystery_expire", "competition", savepoint=True, doc="an open box past the timeout")

KINDS: dict[str, JobKind] = {k.name: k for k in (
    REGISTER, CLAIM, SUBMIT, MYSTERY_BUY, MYSTERY_FORFEIT, ADJUST, TEAM_UPDATE, CLAIM_RELEASE, MYSTERY_EXPIRE)}
KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def task_name(kind: str) -> str:
    return KINDS[kind].task
