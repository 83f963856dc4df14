"""Queue routing: stable across processes, case-insensitive on codes, spread over all queues."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from settings import Settings
from workers.routing import REGISTRATIONS, TASK_FOR_KIND, all_queues, board_queue, mystery_queue

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
        "from workers.routing import board_queue\n"
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
def test_mystery_queue_is_per_competition(shards: int) -> None:
    settings = Settings(mystery_shards=shards)
    for competition_id in range(1, 20):
        queue = mystery_queue(settings, competition_id)
        assert queue == mystery_queue(settings, competition_id)
        assert queue in all_queues(settings)


def test_all_queues() -> None:
    settings = Settings(board_queues=3, mystery_shards=2)
    assert all_queues(settings) == [REGISTRATIONS, "board.0", "board.1", "board.2", "mystery.0", "mystery.1"]


def test_every_job_kind_has_a_task() -> None:
    from models.tables import JOB_KINDS

    assert set(TASK_FOR_KIND) == set(JOB_KINDS)
    assert len(set(TASK_FOR_KIND.values())) == len(TASK_FOR_KIND)
