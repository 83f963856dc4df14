"""Bad requests: each gets an RFC 9457 problem with the right status, never a 500, and no job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support import ADMIN_TOKEN, Api, Db, Stack, TeamHandle, questions, unique

PROBLEM = "application/problem+json"


@dataclass
class Case:
    name: str
    method: str
    path: str  # {slug} and {other} are filled in
    status: int
    token: str | None = None  # "team", "other-team", "admin", "bad" or None
    json: Any = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    field: str | None = None  # the field a 422 must name

    def __str__(self) -> str:
        return self.name


JSON = {"Content-Type": "application/json"}
TEAMS = "/api/v1/competitions/{slug}/teams"
CLAIMS = "/api/v1/competitions/{slug}/claims"
SUBMISSIONS = "/api/v1/competitions/{slug}/submissions"
BOXES = "/api/v1/competitions/{slug}/mystery-boxes"
COMPETITION = "/api/v1/competitions/{slug}"

CASES = [
    # malformed bodies
    Case("malformed JSON", "POST", TEAMS, 400, data=b'{"teamName": ', headers=JSON),
    Case("malformed JSON (team)", "POST", CLAIMS, 400, token="team", data=b"{questionId: Q1}", headers=JSON),
    Case("empty body", "POST", TEAMS, 400, data=b"", headers=JSON),
    Case("body too large", "POST", TEAMS, 413, data=b'{"teamName": "' + b"x" * 70_000 + b'"}', headers=JSON),
    # wrong content type
    Case("form body", "POST", TEAMS, 415, data=b"teamName=Owls",
         headers={"Content-Type": "application/x-www-form-urlencoded"}),
    Case("text body", "POST", SUBMISSIONS, 415, token="team", data=b'{"questionId": "Q1", "answer": "a"}',
         headers={"Content-Type": "text/plain"}),
    Case("no content type", "POST", CLAIMS, 415, token="team", data=b'{"questionId": "Q1"}'),
    # missing fields and wrong types
    Case("missing teamName", "POST", TEAMS, 422, json={"members": ["a"]}, field="teamName"),
    Case("teamName not a string", "POST", TEAMS, 422, json={"teamName": 12}, field="teamName"),
    Case("blank teamName", "POST", TEAMS, 422, json={"teamName": "   "}, field="teamName"),
    Case("teamName too long", "POST", TEAMS, 422, json={"teamName": "x" * 65}, field="teamName"),
    Case("member not a string", "POST", TEAMS, 422, json={"teamName": "Owls", "members": ["a", 5]},
         field="members[1]"),
    Case("bad email", "POST", TEAMS, 422, json={"teamName": "Owls", "email": "owls"}, field="email"),
    Case("array body", "POST", TEAMS, 422, json=[{"teamName": "Owls"}], field="body"),
    Case("missing questionId", "POST", CLAIMS, 422, token="team", json={}, field="questionId"),
    Case("questionId not a string", "POST", CLAIMS, 422, token="team", json={"questionId": 1}, field="questionId"),
    Case("missing answer", "POST", SUBMISSIONS, 422, token="team", json={"questionId": "Q1"}, field="answer"),
    Case("answer not a string", "POST", SUBMISSIONS, 422, token="team", json={"questionId": "Q1", "answer": ["a"]},
         field="answer"),
    Case("unknown difficulty", "POST", BOXES, 422, token="team", json={"difficulty": "IMPOSSIBLE"},
         field="difficulty"),
    Case("price in the body is not a field", "POST", BOXES, 422, token="team", json={"price": 0},
         field="difficulty"),
    Case("bad state", "PATCH", COMPETITION, 422, token="admin", json={"state": "started"}, field="state"),
    Case("bad maxOpenClaims", "PATCH", COMPETITION, 422, token="admin", json={"maxOpenClaims": "many"},
         field="maxOpenClaims"),
    Case("question without answer", "POST", "/api/v1/competitions/{slug}/questions", 422, token="admin",
         json=[{"questionId": "Z1", "question": "?"}], field="[0].answer"),
    Case("bad Idempotency-Key", "POST", CLAIMS, 400, token="team", json={"questionId": "Q1"},
         headers={"Idempotency-Key": "k" * 300}),
    Case("bad limit", "GET", "/api/v1/competitions/{slug}/leaderboard?limit=lots", 400),
    Case("zero limit", "GET", "/api/v1/competitions/{slug}/leaderboard?limit=0", 400),
    # unknown competition
    Case("register in unknown competition", "POST", "/api/v1/competitions/no-such-{other}/teams", 404,
         json={"teamName": "Owls"}),
    Case("claim in unknown competition", "POST", "/api/v1/competitions/no-such-{other}/claims", 404, token="team",
         json={"questionId": "Q1"}),
    Case("leaderboard of unknown competition", "GET", "/api/v1/competitions/no-such-{other}/leaderboard", 404),
    # authentication and authorisation
    Case("claim without token", "POST", CLAIMS, 401, json={"questionId": "Q1"}),
    Case("claim with wrong token", "POST", CLAIMS, 401, token="bad", json={"questionId": "Q1"}),
    Case("claim with basic auth", "POST", CLAIMS, 401, json={"questionId": "Q1"},
         headers={"Authorization": "Basic b3dsczpvd2xz"}),
    Case("answer without token", "POST", SUBMISSIONS, 401, json={"questionId": "Q1", "answer": "a"}),
    Case("mystery box with wrong token", "POST", BOXES, 401, token="bad", json={"difficulty": "EASY"}),
    Case("forfeit without token", "DELETE", BOXES + "/current", 401),
    Case("me without token", "GET", TEAMS + "/me", 401),
    Case("job without token", "GET", "/api/v1/jobs/00000000-0000-4000-8000-000000000000", 401),
    Case("team of another competition", "POST", CLAIMS, 403, token="other-team", json={"questionId": "Q1"}),
    Case("team token creates a competition", "POST", "/api/v1/competitions", 403, token="team",
         json={"slug": "mine", "title": "Mine"}),
    Case("team token changes the competition", "PATCH", COMPETITION, 403, token="team", json={"state": "finished"}),
    Case("team token adds questions", "POST", "/api/v1/competitions/{slug}/questions", 403, token="team",
         json=[{"questionId": "Z1", "question": "?", "answer": "!"}]),
    Case("no token creates a competition", "POST", "/api/v1/competitions", 401, json={"slug": "x", "title": "X"}),
    Case("wrong token creates a competition", "POST", "/api/v1/competitions", 401, token="bad",
         json={"slug": "x", "title": "X"}),
    # routing
    Case("unknown route", "GET", "/api/v1/nothing-here", 404),
    Case("unknown route under a competition", "POST", "/api/v1/competitions/{slug}/nothing", 404, token="team",
         json={}),
    Case("job id not a uuid", "GET", "/api/v1/jobs/not-a-uuid", 404, token="team"),
    Case("wrong method on claims", "PUT", CLAIMS, 405, token="team", json={"questionId": "Q1"}),
    Case("wrong method on teams", "DELETE", TEAMS, 405, token="admin"),
    Case("wrong method on leaderboard", "POST", "/api/v1/competitions/{slug}/leaderboard", 405, json={}),
    Case("wrong method on a job", "DELETE", "/api/v1/jobs/00000000-0000-4000-8000-000000000000", 405,
         token="team"),
]


@pytest.fixture(scope="module")
def world(stack: Stack) -> dict[str, Any]:
    """Two competitions and a team in each, shared by every case (none of them changes state)."""
    api = Api(stack.api_url)
    try:
        slug = api.create_competition()["slug"]
        api.add_questions(slug, questions(1))
        other = api.create_competition()["slug"]
        team: TeamHandle = api.register(slug)
        stranger: TeamHandle = api.register(other)
    finally:
        api.close()
    return {"slug": slug, "other": other, "team": team.token, "other-team": stranger.token, "admin": ADMIN_TOKEN,
            "bad": "not-a-real-token-" + unique("t")}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_request_gets_a_problem_and_writes_no_job(api: Api, db: Db, world: dict[str, Any], case: Case) -> None:
    path = case.path.format(slug=world["slug"], other=world["other"])
    headers = dict(case.headers)
    if case.token is not None:
        headers["Authorization"] = f"Bearer {world[case.token]}"
    jobs_before = db.count_jobs()

    resp = api.request(case.method, path, json=case.json, data=case.data, headers=headers)

    assert resp.status_code == case.status, resp.text[:500]
    assert resp.headers["Content-Type"].split(";")[0] == PROBLEM
    problem = resp.json()
    assert problem["status"] == case.status
    assert isinstance(problem["type"], str) and problem["type"]
    assert isinstance(problem["title"], str) and problem["title"]
    if case.status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    if case.status == 422:
        assert case.field is not None
        assert any(e["field"] == case.field and e["message"] for e in problem["errors"]), problem
    assert db.count_jobs() == jobs_before
