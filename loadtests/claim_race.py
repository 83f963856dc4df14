"""Scenario 4, claim race: every user hammers the same few board questions.

The fixture holds 20 board questions and 200 registered teams (one per user). Each user claims
a random one of the 20 again and again; a team may hold one unanswered claim, so exactly 20
teams win one question each. The benchmark checks the database for exactly that afterwards.

    .venv/bin/locust -f loadtests/claim_race.py --headless -u 200 -r 200 -t 20s \
        --host http://127.0.0.1:8000
"""

import itertools
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import task

from loadtests.common import QuizUser, fixture, install
from loadtests.fixtures import board_code

install("claim_race")

_SEATS = itertools.count()


class RaceUser(QuizUser):
    expected_errors = frozenset({"question_already_claimed", "claim_limit_reached"})

    def on_start(self) -> None:
        teams = fixture().teams
        # More users than teams share teams; the race is still for the same questions.
        self.team = teams[next(_SEATS) % len(teams)]

    @task
    def claim(self) -> None:
        code = board_code(random.randrange(fixture().board))
        self.run_job("POST", self.comp("/claims"), {"questionId": code}, kind="claim",
                     label="POST /competitions/[slug]/claims", token=self.team["token"])
