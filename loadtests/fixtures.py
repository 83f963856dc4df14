"""Competition set-up for the scenarios, done over the public API before Locust starts.

``python -m loadtests.fixtures SCENARIO --host URL --out fixture.json`` creates a fresh
competition for one scenario (questions, teams, state) and writes what the Locust users need:
the slug, the question counts and, where the scenario starts with registered teams, their
tokens. The answers are never written down: :func:`answer_for` derives them from the code, so a
user can answer right or wrong on purpose.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from loadtests import config

DIFFICULTIES = ("EASY", "MEDIUM", "HARD")
BATCH = 2000  # questions per POST; well under the API's body limit (16 x 64 KiB)


def board_code(i: int) -> str:
    return f"B{i:05d}"


def mystery_code(difficulty: str, i: int) -> str:
    return f"M{difficulty[0]}{i:05d}"


def answer_for(code: str) -> str:
    return f"answer {code.lower()}"


@dataclass
class Size:
    board: int = 0
    mystery_per_difficulty: int = 0
    teams: int = 0
    state: str = "running"


# What each scenario starts from. "full" is the benchmark's workload, "smoke" the CI proof.
SIZES: dict[str, dict[str, Size]] = {
    "registration": {"full": Size(state="open"), "smoke": Size(state="open")},
    "organiser": {"full": Size(board=2000, mystery_per_difficulty=200, teams=300),
                  "smoke": Size(board=200, mystery_per_difficulty=20, teams=30)},
    "competition": {"full": Size(board=20000, mystery_per_difficulty=1000),
                    "smoke": Size(board=1000, mystery_per_difficulty=50)},
    "claim_race": {"full": Size(board=20, teams=200), "smoke": Size(board=5, teams=20)},
    # One question per team: 20,000 is above 30 s at 600 teams/s, twice the stretch target.
    "register_claim": {"full": Size(board=20000), "smoke": Size(board=2000)},
}
SIZES["fanout"] = SIZES["competition"]
SIZES["fanout10k"] = SIZES["competition"]


@dataclass
class Fixture:
    scenario: str
    slug: str
    host: str
    board: int
    mystery_per_difficulty: int
    teams: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Fixture:
        return cls(**json.loads(path.read_text()))


class Api:
    """A small blocking client for set-up (not for load)."""

    def __init__(self, host: str, admin_token: str) -> None:
        self.host = host.rstrip("/")
        self.admin = {"Authorization": f"Bearer {admin_token}"}
        self.http = requests.Session()

    def url(self, path: str) -> str:
        return self.host + path

    def check(self, resp: requests.Response, *ok: int) -> dict[str, Any]:
        if resp.status_code not in ok:
            raise RuntimeError(f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:500]}")
        return resp.json() if resp.content else {}

    def create_competition(self, slug: str, title: str) -> None:
        self.check(self.http.post(self.url("/api/v1/competitions"), headers=self.admin, timeout=30,
                                  json={"slug": slug, "title": title}), 201)

    def set_state(self, slug: str, state: str) -> None:
        self.check(self.http.patch(self.url(f"/api/v1/competitions/{slug}"), headers=self.admin, timeout=30,
                                   json={"state": state}), 200)

    def add_questions(self, slug: str, questions: list[dict[str, Any]]) -> None:
        for start in range(0, len(questions), BATCH):
            self.check(self.http.post(self.url(f"/api/v1/competitions/{slug}/questions"), headers=self.admin,
                                      json=questions[start:start + BATCH], timeout=120), 201)

    def register(self, slug: str, name: str) -> dict[str, Any]:
        """Register one team and wait until its job has finished."""
        http = requests.Session()
        resp = http.post(self.url(f"/api/v1/competitions/{slug}/teams"), timeout=30,
                         headers={"Prefer": "wait=10"},
                         json={"teamName": name, "members": ["Ada", "Grace"], "email": f"{name}@example.com"})
        body = self.check(resp, 200, 202)
        token = body["teamToken"]
        deadline = time.monotonic() + 60
        while body.get("status") not in ("succeeded", "failed"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"registration of {name} did not finish in 60 s")
            time.sleep(0.1)
            body = self.check(http.get(self.url(f"/api/v1/jobs/{body['jobId']}"), timeout=30,
                                       headers={"Authorization": f"Bearer {token}"}), 200)
        if body["status"] != "succeeded":
            raise RuntimeError(f"registration of {name} failed: {body.get('error')}")
        return {"teamId": body["result"]["teamId"], "teamName": name, "token": token}

    def leaderboard(self, slug: str, limit: int) -> list[dict[str, Any]]:
        body = self.check(self.http.get(self.url(f"/api/v1/competitions/{slug}/leaderboard"),
                                        params={"limit": limit}, timeout=30), 200)
        return body["leaderboard"]


def questions_for(size: Size) -> list[dict[str, Any]]:
    out = []
    for i in range(size.board):
        code = board_code(i)
        out.append({"questionId": code, "question": f"Board question {i}?", "answer": answer_for(code),
                    "points": 100 + 50 * (i % 3), "difficulty": DIFFICULTIES[i % 3], "kind": "board"})
    for difficulty in DIFFICULTIES:
        for i in range(size.mystery_per_difficulty):
            code = mystery_code(difficulty, i)
            out.append({"questionId": code, "question": f"Mystery {difficulty} {i}?", "answer": answer_for(code),
                        "points": 0, "difficulty": difficulty, "kind": "mystery"})
    return out


def prepare(scenario: str, host: str, admin_token: str, profile: str = "full", slug: str | None = None) -> Fixture:
    size = SIZES[scenario][profile]
    slug = slug or f"{scenario.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    api = Api(host, admin_token)
    api.create_competition(slug, f"Load test: {scenario}")
    questions = questions_for(size)
    if questions:
        api.add_questions(slug, questions)
    api.set_state(slug, "open")
    teams: list[dict[str, Any]] = []
    if size.teams:
        with ThreadPoolExecutor(max_workers=16) as pool:
            teams = list(pool.map(lambda i: api.register(slug, f"{slug}-t{i:04d}"), range(size.teams)))
    if size.state == "running":
        api.set_state(slug, "running")
    return Fixture(scenario=scenario, slug=slug, host=host, board=size.board,
                   mystery_per_difficulty=size.mystery_per_difficulty, teams=teams)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SIZES))
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument("--profile", choices=("full", "smoke"), default="full")
    parser.add_argument("--out", type=Path, required=True, help="where to write the fixture JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    fixture = prepare(args.scenario, args.host, config.admin_token(), args.profile)
    fixture.save(args.out)
    print(f"{fixture.slug}: {fixture.board} board, {3 * fixture.mystery_per_difficulty} mystery questions, "
          f"{len(fixture.teams)} teams in {time.monotonic() - started:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
