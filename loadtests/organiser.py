"""Scenario 2, organiser operations: list teams, questions and mystery questions page by page,
create questions (one, or ten in one request), adjust teams' points, disqualify and reinstate.

The fixture holds a running competition with 300 registered teams, 2,000 board questions and
600 mystery questions. Every request carries the organiser token (ADMIN_TOKEN).

    ADMIN_TOKEN=... .venv/bin/locust -f loadtests/organiser.py --headless -u 60 -r 60 -t 60s \
        --host http://127.0.0.1:8000
"""

import itertools
import random
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import task

from loadtests import config
from loadtests.common import QuizUser, fixture, install
from loadtests.fixtures import DIFFICULTIES, answer_for

install("organiser")

PAGE = 50
MAX_PAGES = 4

_RUN = uuid.uuid4().hex[:6]
_SERIAL = itertools.count()


class OrganiserUser(QuizUser):
    expected_errors = frozenset({"insufficient_points", "team_disqualified"})

    def on_start(self) -> None:
        self.admin = config.admin_token()

    def pages(self, path: str, label: str, **params: str) -> None:
        cursor = None
        for _ in range(random.randint(1, MAX_PAGES)):
            body = self.read(self.comp(path), label, self.admin, {"limit": PAGE, "cursor": cursor, **params})
            cursor = body and body.get("nextCursor")
            if not cursor:
                return

    @task(3)
    def list_teams(self) -> None:
        self.pages("/teams", "GET /competitions/[slug]/teams (list)")

    @task(3)
    def list_questions(self) -> None:
        self.pages("/questions", "GET /competitions/[slug]/questions?kind=board (list)", kind="board")

    @task(2)
    def list_mystery_questions(self) -> None:
        self.pages("/questions", "GET /competitions/[slug]/questions?kind=mystery (list)", kind="mystery")

    def new_question(self) -> dict:
        code = f"O{_RUN}x{next(_SERIAL):06d}"
        kind = "mystery" if random.random() < 0.3 else "board"
        return {"questionId": code, "question": f"Organiser question {code}?", "answer": answer_for(code),
                "points": random.choice((100, 150, 200)), "difficulty": random.choice(DIFFICULTIES), "kind": kind}

    def create(self, body: object, label: str) -> None:
        headers = {"Authorization": f"Bearer {self.admin}"}
        with self.client.post(self.comp("/questions"), json=body, headers=headers, name=label,
                              catch_response=True, context={"cat": "write"}) as resp:
            if resp.status_code == 201:
                resp.success()
            else:
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:300]}")

    @task(1)
    def create_question(self) -> None:
        self.create(self.new_question(), "POST /competitions/[slug]/questions (one)")

    @task(1)
    def create_questions(self) -> None:
        self.create([self.new_question() for _ in range(10)], "POST /competitions/[slug]/questions (ten)")

    @task(2)
    def adjust_team(self) -> None:
        team = random.choice(fixture().teams)
        delta = random.choice((-20, -10, 10, 25, 50))
        self.run_job("POST", self.comp(f"/teams/{team['teamId']}/adjustments"),
                     {"delta": delta, "reason": "load test adjustment"}, kind="adjust",
                     label="POST /competitions/[slug]/teams/[id]/adjustments", token=self.admin)

    @task(1)
    def disqualify_team(self) -> None:
        # A tenth of the teams go in and out of disqualification.
        teams = fixture().teams
        team = random.choice(teams[: max(1, len(teams) // 10)])
        self.run_job("PATCH", self.comp(f"/teams/{team['teamId']}"), {"disqualified": random.random() < 0.5},
                     kind="team_update", label="PATCH /competitions/[slug]/teams/[id]", token=self.admin)
