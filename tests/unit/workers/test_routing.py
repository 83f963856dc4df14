"""Queue routing and the job-kind registry: stable across processes, case-insensitive on codes,
spread over all queues; every kind declared once, with one rule and one task."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from models.kinds import KINDS, REGISTRATIONS, all_queues, board_queue, competition_queue
from settings import Settings

REPO = Path(__file__).resolve().parents[3]


def test_board_queue_is_pinned() -> None:
    # A changed hash would send the claim and the answer of one question to two different
    # queues during a rolling deploy; these values must never change.
    settings = Settings(board_queues=4)
    assert [board_queue(settings, 1, f"Q{i}") for i in range(1, 9)] == [
        "board.1", "board.3", "board.1", "board.2", "board.0", "board.2", "board.0", "board.1",
    ]
    assert board_queue(settings, 7, "Q123") == "board.2"
    assert board_queue(Settings(board_queues=16), 42, "abc") == "board.1"


def test_board_queue_is_the_same_in_another_process() -> None:
    settings = Settings(board_queues=8)
    codes = [f"Q{i}" for i in range(50)]
    here = [board_queue(settings, 3, code) for code in codes]
    script = (
        "from settings import Settings\n"
        "from models.kinds import board_queue\n"
        f"print(' '.join(board_queue(Settings(board_queues=8), 3, c) for c in {codes!r}))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == here


def test_board_queue_ignores_case_and_surrounding_space() -> None:
    settings = Settings(board_queues=16)
    for code in ("Q1", "Q77", "Maths-3"):
        assert board_queue(settings, 5, code) == board_queue(settings, 5, code.lower())
        assert board_queue(settings, 5, code) == board_queue(settings, 5, f"  {code} ")


def test_board_queue_depends_on_the_competition() -> None:
    settings = Settings(board_queues=16)
    assert len({board_queue(settings, c, "Q1") for c in range(1, 100)}) > 1


def test_board_queues_are_all_used_and_roughly_even() -> None:
    settings = Settings(board_queues=4)
    counts = Counter(board_queue(settings, 9, f"Q{i}") for i in range(4000))
    assert set(counts) == {"board.0", "board.1", "board.2", "board.3"}
    assert min(counts.values()) > 800


@pytest.mark.parametrize("shards", [1, 3])
def test_competition_queue_is_per_competition(shards: int) -> None:
    settings = Settings(competition_queues=shards)
    for competition_id in range(1, 20):
        queue = competition_queue(settings, competition_id)
        assert queue == competition_queue(settings, competition_id)
        assert queue in all_queues(settings)


def test_all_queues() -> None:
    settings = Settings(board_queues=3, competition_queues=2)
    assert all_queues(settings) == [REGISTRATIONS, "board.0", "board.1", "board.2", "competition.0", "competition.1"]


def test_every_kind_routes_to_a_queue_of_its_family() -> None:
    settings = Settings(board_queues=4, competition_queues=2)
    for kind in KINDS.values():
        queue = kind.queue(settings, 7, "Q1")
        assert queue in all_queues(settings)
        assert queue.split(".")[0] == kind.family, kind
    assert KINDS["claim"].queue(settings, 7, "Q1") == board_queue(settings, 7, "Q1")
    assert KINDS["adjust"].queue(settings, 7) == competition_queue(settings, 7)
    with pytest.raises(ValueError, match="question"):
        KINDS["submit"].queue(settings, 7)


def test_every_kind_has_one_rule_and_one_task_named_by_it() -> None:
    from models.tables import JOB_KINDS
    from workers.rules import RULES
    from workers.tasks import TASKS, app

    assert set(RULES) == set(KINDS) == set(JOB_KINDS) == set(TASKS)
    for name, kind in KINDS.items():
        assert kind.task == f"quiz.jobs.{name}"
        assert app.tasks[kind.task].name == TASKS[name].name == kind.task


def test_a_second_rule_for_a_kind_is_refused() -> None:
    from workers.rules import rule

    with pytest.raises(RuntimeError, match="two rules"):
        rule(KINDS["claim"])(lambda *args: {})
