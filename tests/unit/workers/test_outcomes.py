"""What a consumer's task returns for Flower, and the outcomes it remembers for messages still to come."""

from __future__ import annotations

import uuid
from typing import Any

from settings import Settings
from workers import jobs
from workers.jobs import WorkerContext, outcome


def _context() -> WorkerContext:
    nothing: Any = None
    return WorkerContext(Settings(), nothing, nothing, nothing, nothing, nothing)


def test_an_outcome_names_the_refusal() -> None:
    assert outcome("succeeded", None) == "succeeded"
    assert outcome("failed", {"code": "question_already_claimed", "message": "..."}) == \
        "failed: question_already_claimed"
    assert outcome("failed", None) == "failed: unknown"


def test_remembered_outcomes_are_bounded_oldest_first(monkeypatch: Any) -> None:
    monkeypatch.setattr(jobs, "REMEMBERED", 3)
    ctx = _context()
    ids = [uuid.uuid4() for _ in range(5)]
    ctx.remember({ids[0]: "succeeded", ids[1]: "failed: x"})
    ctx.remember({ids[2]: "succeeded", ids[3]: "succeeded", ids[4]: "failed: y"})
    assert list(ctx.finished) == ids[2:]


def test_a_remembered_outcome_answers_its_message_once() -> None:
    ctx = _context()
    job_id = uuid.uuid4()
    ctx.remember({job_id: "failed: deadline_passed"})
    # ctx.autocommit is None here: the remembered answer needs no database.
    assert jobs.run_job(ctx, job_id) == "failed: deadline_passed"
    assert job_id not in ctx.finished
