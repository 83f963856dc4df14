"""Which queue a job goes to. Every action on one question lands on one queue."""

from __future__ import annotations

import zlib

from settings import Settings

REGISTRATIONS = "registrations"


def board_queue(settings: Settings, competition_id: int, question_code: str) -> str:
    # crc32 is stable across processes and Python versions, unlike hash().
    key = f"{competition_id}:{question_code.strip().upper()}".encode()
    return f"board.{zlib.crc32(key) % settings.board_queues}"


def mystery_queue(settings: Settings, competition_id: int) -> str:
    return f"mystery.{competition_id % settings.mystery_shards}"


def all_queues(settings: Settings) -> list[str]:
    return (
        [REGISTRATIONS]
        + [f"board.{i}" for i in range(settings.board_queues)]
        + [f"mystery.{i}" for i in range(settings.mystery_shards)]
    )


TASK_FOR_KIND = {
    "register": "quiz.jobs.register",
    "claim": "quiz.jobs.claim",
    "submit": "quiz.jobs.submit",
    "mystery_buy": "quiz.jobs.mystery_buy",
    "mystery_forfeit": "quiz.jobs.mystery_forfeit",
    "adjust": "quiz.jobs.adjust",
    "team_update": "quiz.jobs.team_update",
    "claim_release": "quiz.jobs.claim_release",
    "mystery_expire": "quiz.jobs.mystery_expire",
}
