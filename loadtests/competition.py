"""Scenario 3, full competition: teams register, then claim, answer and buy mystery boxes.

Each user registers its team (on start), then loops as fast as it can: claim a random board
question and answer it (right 70% of the time, wrong otherwise); one time in ten it buys a
mystery box of a random difficulty instead, and answers it (80%) or forfeits it (20%). Every
step waits for its job to finish (poll, or ``Prefer: wait`` for a share), as a real client must
before its next step. Run the Socket.IO spectators beside it (``python -m loadtests.spectators``).

    .venv/bin/locust -f loadtests/competition.py --headless -u 150 -r 150 -t 90s \
        --host http://127.0.0.1:8000
"""

import itertools
import random
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import task
from locust.exception import StopUser

from loadtests.common import QuizUser, fixture, install
from loadtests.fixtures import DIFFICULTIES, answer_for, board_code

install("competition")

RIGHT = 0.7
MYSTERY = 0.1
FORFEIT = 0.2

_RUN = uuid.uuid4().hex[:6]
_SERIAL = itertools.count()


class TeamUser(QuizUser):
    expected_errors = frozenset({
        "question_already_claimed",  # another team got there first
        "insufficient_points",
        "no_mystery_left",
        "mystery_already_open",
    })

    def on_start(self) -> None:
        name = f"team-{_RUN}-{next(_SERIAL):04d}"
        for _ in range(3):
            job = self.register(name)
            if job is not None and job["status"] == "succeeded":
                self.token = job["teamToken"]
                return
        raise StopUser()

    @task
    def play(self) -> None:
        if random.random() < MYSTERY:
            self.mystery_box()
        else:
            self.board_question()

    def board_question(self) -> None:
        code = board_code(random.randrange(fixture().board))
        job = self.run_job("POST", self.comp("/claims"), {"questionId": code}, kind="claim",
                           label="POST /competitions/[slug]/claims", token=self.token)
        if job is not None and job["status"] == "succeeded":
            self.answer(code)

    def answer(self, code: str) -> None:
        given = answer_for(code) if random.random() < RIGHT else "a wrong answer"
        self.run_job("POST", self.comp("/submissions"), {"questionId": code, "answer": given}, kind="submit",
                     label="POST /competitions/[slug]/submissions", token=self.token)

    def mystery_box(self) -> None:
        job = self.run_job("POST", self.comp("/mystery-boxes"), {"difficulty": random.choice(DIFFICULTIES)},
                           kind="mystery_buy", label="POST /competitions/[slug]/mystery-boxes", token=self.token)
        if job is None:
            return
        if job["status"] == "succeeded" and random.random() >= FORFEIT:
            self.answer(job["result"]["mysteryQuestionId"])
        elif job["status"] == "succeeded" or (job.get("error") or {}).get("code") == "mystery_already_open":
            self.run_job("DELETE", self.comp("/mystery-boxes/current"), None, kind="mystery_forfeit",
                         label="DELETE /competitions/[slug]/mystery-boxes/current", token=self.token)
