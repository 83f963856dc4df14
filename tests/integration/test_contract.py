"""The API contract (issue 3): problem+json for every error status, authentication and
authorisation, rate limits, idempotency, pagination, CORS and security headers, the OpenAPI
document, and answers that never reach a team."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import falcon.inspect
import pytest
import requests
import socketio
from sqlalchemy import func, select, text

from models.tables import Job, Team
from settings import Settings
from tests.integration.organiser_support import (
    SECURITY_HEADERS,
    claimed_codes,
    comp,
    field_errors,
    finish_job,
    in_process_app,
    problem,
    standings_of,
    wait_for_window_start,
)
from tests.support import (
    REPO,
    Api,
    Db,
    Listener,
    answer_of,
    expect,
    failed_with,
    free_port,
    ok_job,
    questions,
    unique,
    wait_until,
)

# -- one test per error status ---------------------------------------------------------------


def test_malformed_json_is_400(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    for raw in (b'{"teamName": "Owls"', b"{'teamName': 'Owls'}", b"\xff\xfe", b'{"teamName": "Owls",}'):
        resp = api.request("POST", comp(slug, "/teams"), data=raw, headers={"Content-Type": "application/json"})
        problem(resp, 400, "malformed-json")
    empty = api.request("POST", comp(slug, "/teams"), data=b"", headers={"Content-Type": "application/json"})
    problem(empty, 400)
    bad_query = api.request("GET", comp(slug, "/leaderboard"), params={"limit": "ten"})
    assert field_errors(problem(bad_query, 400)).keys() == {"limit"}


def test_malformed_json_is_400_whatever_it_starts_with(api: Api, competition: dict[str, Any]) -> None:
    # Syntax is checked before the schema: a broken body is 400, not a 422 about its first value.
    slug = competition["slug"]
    for raw in (b"[1, 2,]", b'{"teamName": 42,', b'"Owls'):
        resp = api.request("POST", comp(slug, "/teams"), data=raw, headers={"Content-Type": "application/json"})
        problem(resp, 400, "malformed-json")


def test_no_token_or_an_unknown_token_is_401(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    job_path = f"/api/v1/jobs/{uuid.uuid4()}"
    calls: list[tuple[str, str, Any]] = [
        ("POST", comp(slug, "/claims"), {"questionId": "Q1"}),
        ("POST", comp(slug, "/submissions"), {"questionId": "Q1", "answer": "x"}),
        ("POST", comp(slug, "/mystery-boxes"), {"difficulty": "EASY"}),
        ("DELETE", comp(slug, "/mystery-boxes/current"), None),
        ("GET", comp(slug, "/teams/me"), None),
        ("GET", job_path, None),
        ("POST", "/api/v1/competitions", {"slug": unique("x"), "title": "x"}),
        ("PATCH", comp(slug), {"state": "paused"}),
        ("GET", comp(slug, "/teams"), None),
        ("GET", comp(slug, "/audit"), None),
    ]
    for method, path, body in calls:
        for headers in ({}, {"Authorization": "Bearer not-a-real-token"}, {"Authorization": "Basic YTpi"},
                        {"Authorization": "Bearer "}):
            resp = api.request(method, path, json=body, headers=headers)
            problem(resp, 401, "unauthorized")
            assert resp.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
    assert api.request("GET", comp(slug)).json()["state"] == "running"


def test_a_team_token_on_an_organiser_route_is_403(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug)
    calls: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/competitions", {"slug": unique("x"), "title": "x"}),
        ("GET", "/api/v1/competitions", None),
        ("PATCH", comp(slug), {"state": "paused"}),
        ("POST", comp(slug, "/questions"), {"questionId": "Z1", "question": "q", "answer": "a"}),
        ("GET", comp(slug, "/questions/Q1"), None),
        ("PATCH", comp(slug, "/questions/Q1"), {"points": 1}),
        ("DELETE", comp(slug, "/questions/Q1"), None),
        ("GET", comp(slug, "/questions/export"), None),
        ("GET", comp(slug, "/teams"), None),
        ("GET", comp(slug, f"/teams/{team.id}"), None),
        ("PATCH", comp(slug, f"/teams/{team.id}"), {"disqualified": False}),
        ("POST", comp(slug, f"/teams/{team.id}/adjustments"), {"delta": 1000, "reason": "me"}),
        ("GET", comp(slug, "/results"), None),
        ("GET", comp(slug, "/ledger"), None),
        ("GET", comp(slug, "/audit"), None),
    ]
    for method, path, body in calls:
        resp = api.request(method, path, token=team.token, json=body)
        problem(resp, 403, "forbidden")
    assert api.me(slug, team.token)["points"] == 1000
    assert api.request("GET", comp(slug)).json()["state"] == "running"

    other = api.create_competition()
    resp = api.request("POST", comp(other["slug"], "/claims"), token=team.token, json={"questionId": "Q1"})
    problem(resp, 403, "forbidden")


def test_unknown_competitions_routes_and_things_are_404(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    team = api.register(slug)
    missing = unique("missing")
    for method, path, token in [
        ("GET", comp(missing), None),
        ("GET", comp(missing, "/leaderboard"), None),
        ("GET", comp(missing, "/questions"), None),
        ("GET", comp(missing, "/results"), api.admin_token),
        ("GET", comp(slug, "/questions/NOPE"), api.admin_token),
        ("GET", comp(slug, "/teams/999999999"), api.admin_token),
        ("GET", f"/api/v1/jobs/{uuid.uuid4()}", api.admin_token),
        ("GET", f"/api/v1/jobs/{uuid.uuid4()}", team.token),
    ]:
        problem(api.request(method, path, token=token), 404)
    registration = api.request("POST", comp(missing, "/teams"), json={"teamName": "Owls"})
    assert problem(registration, 404, "competition-not-found")["detail"]
    for path in ("/api/v1/nothing-here", "/api/v2/competitions", "/api/v1/jobs/not-a-uuid", "/favicon.ico"):
        problem(api.request("GET", path), 404, "not-found")


def test_a_method_a_route_does_not_have_is_405(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    for method, path in [("DELETE", comp(slug, "/leaderboard")), ("PUT", comp(slug, "/claims")),
                         ("GET", comp(slug, "/claims")), ("POST", "/healthz"), ("DELETE", comp(slug))]:
        resp = api.request(method, path, token=api.admin_token)
        problem(resp, 405, "method-not-allowed")
        assert resp.headers.get("Allow"), (method, path)
        assert method not in resp.headers["Allow"]


def test_conflicts_are_409(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    body = problem(api.admin("PATCH", comp(slug), json={"state": "open"}), 409, "illegal-transition")
    assert body["allowed"] == ["paused", "finished"]
    assert "paused" in body["detail"] and "finished" in body["detail"]

    api.add_questions(slug, questions(2))
    duplicate = api.admin("POST", comp(slug, "/questions"), json=questions(1, start=2) + questions(1, start=3))
    errors = field_errors(problem(duplicate, 409, "question-exists"))
    assert list(errors) == ["[0].questionId"]
    single = api.admin("POST", comp(slug, "/questions"), json=questions(1)[0])
    assert list(field_errors(problem(single, 409))) == ["questionId"]
    assert [q["questionId"] for q in api.admin("GET", comp(slug, "/questions")).json()["items"]] == ["Q1", "Q2"]

    again = api.admin("POST", "/api/v1/competitions", json={"slug": slug, "title": "again"})
    problem(again, 409, "competition-exists")


def test_a_body_over_64_kib_is_413(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    big = json.dumps({"teamName": "Owls", "members": ["x" * 60] * 20, "email": "a@b.co",
                      "padding": "y" * 70_000}).encode()
    assert len(big) > 64 * 1024
    resp = api.request("POST", comp(slug, "/teams"), data=big, headers={"Content-Type": "application/json"})
    problem(resp, 413, "payload-too-large")

    assert not api.request("GET", comp(slug, "/leaderboard")).json()["leaderboard"]


def test_a_body_that_is_not_json_is_415(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    team = api.register(slug)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        resp = api.request("POST", comp(slug, "/claims"), token=team.token, data=b'{"questionId": "Q1"}',
                           headers=headers)
        problem(resp, 415, "unsupported-media-type")
    resp = api.admin("POST", comp(slug, "/questions/import"), data=b"<questions/>",
                     headers={"Content-Type": "application/xml"})
    problem(resp, 415)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/teams", {"members": ["Ann"]}, "teamName"),
        ("/teams", {"teamName": ""}, "teamName"),
        ("/teams", {"teamName": "x" * 65}, "teamName"),
        ("/teams", {"teamName": 42}, "teamName"),
        ("/teams", {"teamName": "Owls", "members": ["Ann", "Bo", "", "Di"]}, "members[2]"),
        ("/teams", {"teamName": "Owls", "email": "not an email"}, "email"),
        ("/teams", {"teamName": "Owls\u0000"}, "teamName"),
        ("/teams", ["Owls"], "body"),
        ("/claims", {"questionId": "../etc/passwd"}, "questionId"),
        ("/claims", {}, "questionId"),
        ("/submissions", {"questionId": "Q1"}, "answer"),
        ("/submissions", {"questionId": "Q1", "answer": "a" * 1001}, "answer"),
        ("/mystery-boxes", {"difficulty": "IMPOSSIBLE"}, "difficulty"),
    ],
)
def test_a_schema_violation_is_422_naming_the_field(api: Api, competition: dict[str, Any], path: str, body: Any,
                                                    field: str) -> None:
    slug = competition["slug"]
    team = api.register(slug)
    resp = api.request("POST", comp(slug, path), token=team.token, json=body)
    errors = field_errors(problem(resp, 422, "validation-error"))
    assert field in errors, errors


def test_a_client_cannot_choose_what_a_mystery_box_costs(api: Api) -> None:
    slug = api.create_competition(mysteryPrices={"EASY": 70})["slug"]
    api.add_questions(slug, questions(1, prefix="M", kind="mystery", difficulty="EASY"))
    team = api.register(slug)
    job = api.act("POST", comp(slug, "/mystery-boxes"), team.token, {"difficulty": "EASY", "price": 0, "reward": 10**6})
    assert ok_job(job)["deductedPoints"] == 70
    assert ok_job(job)["potentialPoints"] == 100
    assert api.me(slug, team.token)["points"] == 930


def test_organiser_bodies_are_validated_with_the_field_named(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    for body, field in [
        ({"maxOpenClaims": 0}, "maxOpenClaims"),
        ({"state": "exploded"}, "state"),
        ({"mysteryPrices": {"EASY": -1}}, "mysteryPrices.EASY"),
        ({"startingPoints": "lots"}, "startingPoints"),
        ({"freezeAt": "tomorrow"}, "freezeAt"),
    ]:
        errors = field_errors(problem(api.admin("PATCH", comp(slug), json=body), 422))
        assert field in errors, (body, errors)
    created = api.admin("POST", "/api/v1/competitions", json={"slug": "Not A Slug", "title": "x"})
    assert "slug" in field_errors(problem(created, 422))
    question = api.admin("POST", comp(slug, "/questions"), json=[{"questionId": "Q1", "question": "q"}])
    assert "[0].answer" in field_errors(problem(question, 422))
    assert api.request("GET", comp(slug)).json()["maxOpenClaims"] == 1


def _write(client: Any, path: str, token: str | None, body: Any, remote: str = "127.0.0.1") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.simulate_post(path, json=body, headers=headers, remote_addr=remote)


def test_a_team_over_its_write_limit_gets_429_until_the_window_resets(api: Api, settings: Settings,
                                                                      competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    team, other = api.register(slug), api.register(slug)
    window, limit = 3, 4
    with in_process_app(settings, rate_limit_team=limit, rate_limit_ip=0, rate_limit_window=window) as client:
        claim = comp(slug, "/claims")
        wait_for_window_start(window)
        accepted = [_write(client, claim, team.token, {"questionId": "Q1"}) for _ in range(limit)]
        assert [r.status_code for r in accepted] == [202] * limit
        refused = _write(client, claim, team.token, {"questionId": "Q1"})
        limited_at = time.monotonic()
        body = problem(refused, 429, "too-many-requests")
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= window
        assert body["retryAfter"] == retry_after
        # Invalid bodies and GETs: the limit counts every write, reads are free.
        problem(_write(client, claim, team.token, {}), 429)
        assert client.simulate_get(comp(slug, "/teams/me"), headers={"Authorization": f"Bearer {team.token}"}) \
            .status_code == 200
        # Another team is not affected.
        assert _write(client, claim, other.token, {"questionId": "Q1"}).status_code == 202

        reset = wait_until(lambda: _write(client, claim, team.token, {"questionId": "Q1"}).status_code == 202,
                           timeout=window + 2, interval=0.1, message="the rate limit to reset")
        assert reset
        assert time.monotonic() - limited_at <= retry_after + 1


def test_one_address_over_its_write_limit_gets_429(api: Api, settings: Settings,
                                                   competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    window, limit = 5, 3
    with in_process_app(settings, rate_limit_ip=limit, rate_limit_team=0, rate_limit_window=window) as client:
        path = comp(slug, "/teams")
        wait_for_window_start(window, within=2)
        statuses = [_write(client, path, None, {"teamName": unique("ip")}, remote="203.0.113.7").status_code
                    for _ in range(limit)]
        assert statuses == [202] * limit
        refused = _write(client, path, None, {"teamName": unique("ip")}, remote="203.0.113.7")
        problem(refused, 429, "too-many-requests")
        assert 1 <= int(refused.headers["Retry-After"]) <= window
        assert _write(client, path, None, {"teamName": unique("ip")}, remote="203.0.113.8").status_code == 202
        # Organisers are not limited.
        for _ in range(limit + 2):
            resp = client.simulate_patch(comp(slug), json={"leaderboardSize": 10}, remote_addr="203.0.113.7",
                                         headers={"Authorization": f"Bearer {api.admin_token}"})
            assert resp.status_code == 200


def test_wrong_answers_are_limited_separately(api: Api, settings: Settings, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(3))
    team = api.register(slug)
    for code in ("Q1", "Q2"):
        ok_job(api.claim(slug, team.token, code))
        assert ok_job(api.submit(slug, team.token, code, "a wrong guess"))["correct"] is False
    ok_job(api.claim(slug, team.token, "Q3"))
    with in_process_app(settings, wrong_answer_limit=2) as client:
        headers = {"Authorization": f"Bearer {team.token}"}
        # The count is published after the worker commits; it has already been for both.
        refused = wait_until(
            lambda: (r := client.simulate_post(comp(slug, "/submissions"), headers=headers,
                                               json={"questionId": "Q3", "answer": answer_of("Q3")}))
            .status_code == 429 and r,
            timeout=10, message="the wrong-answer limit")
        problem(refused, 429, "too-many-requests")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        # Other writes are still allowed.
        assert client.simulate_post(comp(slug, "/mystery-boxes"), headers=headers,
                                    json={"difficulty": "EASY"}).status_code == 202


def test_database_down_is_503_with_retry_after(settings: Settings, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/quiz"
    with in_process_app(settings, database_url=dead) as client:
        ready = client.simulate_get("/readyz")
        body = problem(ready, 503, "service-unavailable")
        assert int(ready.headers["Retry-After"]) > 0
        assert body["checks"]["database"].startswith("unavailable")
        assert body["checks"]["redis"] == "ok"
        for resp in (client.simulate_post(comp(slug, "/teams"), json={"teamName": "Owls"}),
                     client.simulate_get(comp(slug, "/leaderboard")),
                     client.simulate_post(comp(slug, "/claims"), json={"questionId": "Q1"},
                                          headers={"Authorization": "Bearer some-token"})):
            problem(resp, 503, "service-unavailable")
            assert int(resp.headers["Retry-After"]) > 0
        assert client.simulate_get("/healthz").status_code == 200


def test_redis_down_is_503_with_retry_after(api: Api, settings: Settings, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug)
    with in_process_app(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0") as client:
        ready = client.simulate_get("/readyz")
        body = problem(ready, 503, "service-unavailable")
        assert int(ready.headers["Retry-After"]) > 0
        assert body["checks"] == {"database": "ok", "redis": body["checks"]["redis"]}
        assert body["checks"]["redis"].startswith("unavailable")
        resp = client.simulate_post(comp(slug, "/submissions"), headers={"Authorization": f"Bearer {team.token}"},
                                    json={"questionId": "Q1", "answer": "x"})
        problem(resp, 503, "service-unavailable")
        assert int(resp.headers["Retry-After"]) > 0


# -- authentication and authorisation -------------------------------------------------------------


def test_another_teams_job_is_404(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    owls, bats = api.register(slug, "Owls"), api.register(slug, "Bats")
    job = api.claim(slug, owls.token, "Q1")
    ok_job(job)
    assert api.job(job["jobId"], owls.token).json()["result"]["questionId"] == "Q1"
    body = problem(api.job(job["jobId"], bats.token), 404, "job-not-found")
    assert "Q1" not in json.dumps(body)
    # Nor can a team read the registration job of another.
    problem(api.job(owls.registration_job, bats.token), 404)
    # An organiser reads any job.
    admin_view = api.job(job["jobId"], api.admin_token)
    expect(admin_view, 200)
    assert admin_view.json()["jobId"] == job["jobId"]


def _decoded(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_team_tokens_are_random_128_bit_and_stored_hashed(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    teams = [api.register(slug) for _ in range(3)]
    keyed = api.request("POST", comp(slug, "/teams"), json={"teamName": unique("keyed")},
                        headers={"Idempotency-Key": str(uuid.uuid4())})
    keyed_token = keyed.json()["teamToken"]
    ok_job(finish_job(api, keyed, keyed_token))
    tokens = [t.token for t in teams] + [keyed_token]
    assert len(set(tokens)) == len(tokens)
    for token in tokens:
        assert len(_decoded(token)) >= 16, token
    for team in teams:
        with db.session() as session:
            stored = session.scalar(select(Team.token_hash).where(Team.id == team.id))
            team_row = session.scalar(text("SELECT row_to_json(t)::text FROM teams t WHERE id = :id"),
                                      {"id": team.id})
            job_rows = session.scalars(text("SELECT row_to_json(j)::text FROM jobs j WHERE team_id = :id"),
                                       {"id": team.id}).all()
        assert stored == hashlib.sha256(team.token.encode()).digest()
        assert stored != team.token.encode()
        assert team.token not in team_row
        assert job_rows and all(team.token not in row for row in job_rows)


def test_the_web_entry_point_refuses_production_without_an_admin_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ADMIN_TOKEN"}
    for module in ("web.wsgi", "workers.celery_app"):
        result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True,
                                text=True, env={**env, "QUIZ_ENV": "production"}, timeout=60)
        assert result.returncode != 0, module
        assert "ADMIN_TOKEN" in result.stderr, result.stderr[-2000:]


def test_a_bad_socketio_token_is_refused(api: Api, competition: dict[str, Any],
                                         listen: Callable[..., Listener]) -> None:
    slug = competition["slug"]
    team = api.register(slug)
    elsewhere = api.register(api.create_competition()["slug"])
    for token in ("not-a-token", elsewhere.token, "", 42):
        with pytest.raises(socketio.exceptions.ConnectionError):
            listen(slug, token=token)
    with pytest.raises(socketio.exceptions.ConnectionError):
        listen(unique("nowhere"))
    assert listen(slug, token=team.token).wait_event("leaderboard_update")["competition"] == slug
    assert listen(slug, token=api.admin_token).wait_event("leaderboard_update")["competition"] == slug


# -- idempotency -----------------------------------------------------------------------------


def _jobs_with_key(db: Db, key: str) -> int:
    return int(db.scalar(select(func.count()).select_from(Job).where(Job.idempotency_key == key)))


def test_the_same_key_twice_returns_the_same_job(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(2))
    team = api.register(slug)
    key = str(uuid.uuid4())
    first = api.request("POST", comp(slug, "/claims"), token=team.token, json={"questionId": "Q1"},
                        headers={"Idempotency-Key": key})
    expect(first, 202, 200)
    finished = finish_job(api, first, team.token)
    again = api.request("POST", comp(slug, "/claims"), token=team.token, json={"questionId": "Q1"},
                        headers={"Idempotency-Key": key})
    expect(again, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == f"/api/v1/jobs/{finished['jobId']}"
    assert again.json()["jobId"] == finished["jobId"]
    assert again.json()["status"] == "succeeded"
    assert again.json()["result"] == finished["result"]
    assert _jobs_with_key(db, key) == 1
    # The same key from another team is another team's request.
    rival = api.register(slug)
    theirs = api.request("POST", comp(slug, "/claims"), token=rival.token, json={"questionId": "Q2"},
                         headers={"Idempotency-Key": key})
    assert finish_job(api, theirs, rival.token)["jobId"] != finished["jobId"]
    assert _jobs_with_key(db, key) == 2


def test_the_same_registration_key_twice_gives_one_team_and_one_token(api: Api, db: Db,
                                                                      competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    key, name = str(uuid.uuid4()), unique("Retry")
    responses = [api.request("POST", comp(slug, "/teams"), json={"teamName": name, "members": ["Ann"]},
                             headers={"Idempotency-Key": key}) for _ in range(3)]
    for resp in responses:
        expect(resp, 202, 200)
    assert len({r.json()["jobId"] for r in responses}) == 1
    assert len({r.json()["teamToken"] for r in responses}) == 1
    token = responses[0].json()["teamToken"]
    assert ok_job(finish_job(api, responses[0], token))["teamName"] == name
    assert _jobs_with_key(db, key) == 1
    competition_id = db.competition(slug).id
    assert [t.name for t in db.teams(competition_id)] == [name]
    assert api.me(slug, token)["teamName"] == name
    # A retry after the job finished still answers with the finished job and the token.
    late = api.request("POST", comp(slug, "/teams"), json={"teamName": name, "members": ["Ann"]},
                       headers={"Idempotency-Key": key})
    expect(late, 200)
    assert (late.json()["jobId"], late.json()["teamToken"], late.json()["status"]) == \
        (responses[0].json()["jobId"], token, "succeeded")


def test_the_same_key_with_a_different_body_is_422(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(2))
    team = api.register(slug)
    key = str(uuid.uuid4())
    first = api.request("POST", comp(slug, "/claims"), token=team.token, json={"questionId": "Q1"},
                        headers={"Idempotency-Key": key})
    expect(first, 202, 200)
    for method, path, body in [("POST", comp(slug, "/claims"), {"questionId": "Q2"}),
                               ("POST", comp(slug, "/submissions"), {"questionId": "Q1", "answer": "x"})]:
        resp = api.request(method, path, token=team.token, json=body, headers={"Idempotency-Key": key})
        assert "Idempotency-Key" in field_errors(problem(resp, 422, "validation-error"))
    registration_key = str(uuid.uuid4())
    expect(api.request("POST", comp(slug, "/teams"), json={"teamName": unique("A")},
                       headers={"Idempotency-Key": registration_key}), 202, 200)
    changed = api.request("POST", comp(slug, "/teams"), json={"teamName": unique("B")},
                          headers={"Idempotency-Key": registration_key})
    assert "Idempotency-Key" in field_errors(problem(changed, 422))
    assert _jobs_with_key(db, key) == 1
    assert _jobs_with_key(db, registration_key) == 1
    too_long = api.request("POST", comp(slug, "/claims"), token=team.token, json={"questionId": "Q2"},
                           headers={"Idempotency-Key": "x" * 256})
    assert "Idempotency-Key" in field_errors(problem(too_long, 400))


def test_different_keys_make_different_jobs(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug)
    keys = [str(uuid.uuid4()), str(uuid.uuid4())]
    jobs = [finish_job(api, api.request("POST", comp(slug, "/claims"), token=team.token, json={"questionId": "Q1"},
                                        headers={"Idempotency-Key": key}), team.token) for key in keys]
    assert jobs[0]["jobId"] != jobs[1]["jobId"]
    ok_job(jobs[0])
    failed_with(jobs[1], "question_already_claimed")
    assert [_jobs_with_key(db, key) for key in keys] == [1, 1]


# -- pagination ------------------------------------------------------------------------------


def _walk(api: Api, path: str, limit: int, token: str | None = None, items: str = "items",
          **params: Any) -> list[dict[str, Any]]:
    """Every item of a paginated list, following nextCursor."""
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        resp = api.request("GET", path, token=token, params=query)
        expect(resp, 200)
        page = resp.json()
        assert len(page[items]) <= limit
        seen.extend(page[items])
        cursor = page["nextCursor"]
        if cursor is None:
            return seen
    raise AssertionError(f"{path} never ended")


def test_every_list_pages_through_every_item_once(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(7) + questions(2, prefix="M", kind="mystery"))
    teams = [api.register(slug, f"Pager {i}") for i in range(5)]
    admin = api.admin_token

    bank = _walk(api, comp(slug, "/questions"), 3, admin)
    assert [q["questionId"] for q in bank] == [f"Q{i}" for i in range(1, 8)] + ["M1", "M2"]
    board = _walk(api, comp(slug, "/questions"), 2)
    assert [q["questionId"] for q in board] == [f"Q{i}" for i in range(1, 8)]
    listed = _walk(api, comp(slug, "/teams"), 2, admin)
    assert sorted(t["teamId"] for t in listed) == sorted(t.id for t in teams)
    leaderboard = _walk(api, comp(slug, "/leaderboard"), 2, items="leaderboard")
    assert sorted(r["teamName"] for r in leaderboard) == sorted(t.name for t in teams)
    assert [r["rank"] for r in leaderboard] == [1, 2, 3, 4, 5]
    audit = _walk(api, comp(slug, "/audit"), 1, admin)
    assert len({e["id"] for e in audit}) == len(audit) >= 4
    competitions = _walk(api, "/api/v1/competitions", 50, admin)
    assert [c["slug"] for c in competitions].count(slug) == 1
    assert len({c["slug"] for c in competitions}) == len(competitions)


@pytest.mark.parametrize(("path", "maximum", "admin"), [
    ("/questions", 200, True), ("/questions", 200, False), ("/teams", 200, True), ("/audit", 200, True),
    ("/leaderboard", 500, False),
])
def test_a_limit_above_the_maximum_is_400(api: Api, competition: dict[str, Any], path: str, maximum: int,
                                          admin: bool) -> None:
    token = api.admin_token if admin else None
    url = comp(competition["slug"], path)
    expect(api.request("GET", url, token=token, params={"limit": maximum}), 200)
    for bad in (maximum + 1, 0, -1, "many"):
        resp = api.request("GET", url, token=token, params={"limit": bad})
        assert "limit" in field_errors(problem(resp, 400)), bad
    resp = api.request("GET", url, token=token, params={"cursor": "not-a-cursor!"})
    assert "cursor" in field_errors(problem(resp, 400))


# -- CORS and security headers ---------------------------------------------------------------


def test_security_headers_are_on_every_response(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    responses = [
        api.request("GET", "/healthz"),
        api.request("GET", comp(slug, "/leaderboard")),
        api.request("POST", comp(slug, "/teams"), json={"teamName": unique("h")}),
        api.request("GET", "/api/v1/nothing"),
        api.request("DELETE", comp(slug, "/leaderboard")),
        api.request("POST", comp(slug, "/teams"), data=b"{", headers={"Content-Type": "application/json"}),
        api.request("GET", comp(slug, "/teams")),
        api.request("GET", "/openapi.json"),
    ]
    for resp in responses:
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers.get(name) == value, (resp.request.method, resp.url, name, resp.headers)
    docs = api.request("GET", "/docs")
    expect(docs, 200)
    assert "default-src 'self'" in docs.headers["Content-Security-Policy"]
    # The stack allows no origin, so no browser page elsewhere may read the API.
    foreign = api.request("GET", comp(slug, "/leaderboard"), headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in foreign.headers


def test_cors_follows_the_allow_list(settings: Settings, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    allowed = "https://screen.example"
    with in_process_app(settings, cors_origins=(allowed,)) as client:
        resp = client.simulate_get(comp(slug, "/leaderboard"), headers={"Origin": allowed})
        assert resp.status_code == 200
        assert resp.headers["Access-Control-Allow-Origin"] == allowed
        assert "Origin" in resp.headers["Vary"]
        assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
        preflight = client.simulate_options(comp(slug, "/claims"), headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"})
        assert preflight.status_code < 300
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        for header in ("Authorization", "Content-Type", "Idempotency-Key", "Prefer"):
            assert header in preflight.headers["Access-Control-Allow-Headers"]
        other = client.simulate_get(comp(slug, "/leaderboard"), headers={"Origin": "https://evil.example"})
        assert other.status_code == 200
        assert "Access-Control-Allow-Origin" not in other.headers
        for name, value in SECURITY_HEADERS.items():
            assert other.headers[name] == value


# -- the OpenAPI document ---------------------------------------------------------------------


def _routes(settings: Settings) -> set[tuple[str, str]]:
    with in_process_app(settings) as client:
        app = client.app
    found = set()
    for route in falcon.inspect.inspect_routes(app):
        path = route.path
        for converter in (":uuid", ":int"):
            path = path.replace(converter, "")
        for method in route.methods:
            if not method.internal:
                found.add((path, method.method.lower()))
    return found


def test_every_route_is_in_the_openapi_document_with_examples(api: Api, settings: Settings) -> None:
    spec = api.request("GET", "/openapi.json").json()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    # The documentation itself and the Prometheus scrape target are not part of the API.
    served = {(p, m) for p, m in _routes(settings)
              if p not in ("/openapi.json", "/docs", "/docs/static", "/metrics")}
    assert served - documented == set()
    assert documented - served == set()
    missing_examples = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status in ("400", "404", "503"):
                assert status in op["responses"], (method, path, status)
            if op.get("security"):
                assert {"401", "403"} <= set(op["responses"]), (method, path)
            if method in ("post", "patch", "delete"):
                assert "429" in op["responses"], (method, path)
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and "example" not in body and "examples" not in body:
                missing_examples.append(f"{method.upper()} {path}")
    assert missing_examples == []


def test_every_write_documents_the_422_of_a_reused_idempotency_key(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug)
    key = str(uuid.uuid4())
    expect(api.request("POST", comp(slug, "/claims"), token=team.token, json={"questionId": "Q1"},
                       headers={"Idempotency-Key": key}), 202, 200)
    # A body-less write can reuse a key too: this 422 is a possible answer of every write.
    reused = api.request("DELETE", comp(slug, "/mystery-boxes/current"), token=team.token,
                         headers={"Idempotency-Key": key})
    assert "Idempotency-Key" in field_errors(problem(reused, 422))
    spec = api.request("GET", "/openapi.json").json()
    undocumented = [f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method, op in ops.items()
                    if any(p["name"] == "Idempotency-Key" for p in op["parameters"]) and "422" not in op["responses"]]
    assert undocumented == []


def test_bad_query_values_are_400_for_everyone(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    team = api.register(slug)
    for token in (None, team.token, api.admin_token):
        for params in ({"kind": "riddle"}, {"difficulty": "easy"}, {"claimed": "perhaps"}, {"kind": ""}):
            problem(api.request("GET", comp(slug, "/questions"), token=token, params=params), 400)
    for path in ("/results", "/ledger", "/questions/export"):
        for value in ("xml", ""):
            problem(api.admin("GET", comp(slug, path), params={"format": value}), 400)
    for value in ("last tuesday", ""):
        problem(api.admin("GET", comp(slug, "/audit"), params={"since": value}), 400)


def test_the_docs_page_serves_swagger_ui(api: Api) -> None:
    page = api.request("GET", "/docs")
    expect(page, 200)
    assert page.headers["Content-Type"].startswith("text/html")
    assert "/openapi.json" in page.text
    for asset in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"):
        expect(api.request("GET", asset), 200)


# -- answers never reach a team -----------------------------------------------------------------


class TeamView:
    """Every HTTP body a team (or the public) received, for the answer scan."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.bodies: list[str] = []

    def call(self, method: str, path: str, token: str | None = None, body: Any = None,
             **kwargs: Any) -> requests.Response:
        resp = self.api.request(method, path, token=token, json=body, **kwargs)
        self.bodies.append(f"{method} {path} -> {resp.status_code} {dict(resp.headers)} {resp.text}")
        assert resp.status_code < 500, resp.text
        return resp

    def act(self, method: str, path: str, token: str, body: Any = None) -> dict[str, Any]:
        resp = self.call(method, path, token, body, wait=10)
        expect(resp, 200, 202)
        job = resp.json()
        while job["status"] not in ("succeeded", "failed"):
            job = self.call("GET", f"/api/v1/jobs/{job['jobId']}", token).json()
        return job


def test_answers_never_appear_in_a_team_facing_response_or_event(api: Api, listen: Callable[..., Listener]) -> None:
    slug = api.create_competition(timeLimitSeconds=3600, deadlineBonusSeconds=60)["slug"]
    board = [{"questionId": f"Q{i}", "question": f"Board question {i}?", "answer": f"zebra-7781-q{i}",
              "points": 100, "difficulty": "EASY", "category": "animals", "options": [f"decoy {i}", "other"]}
             for i in range(1, 5)]
    mystery = [{"questionId": f"M{i}", "question": f"Mystery {i}?", "answer": f"quokka-3319-m{i}",
                "points": 0, "difficulty": "EASY", "kind": "mystery"} for i in range(1, 5)]
    api.add_questions(slug, board + mystery)
    answers = [q["answer"] for q in board + mystery]
    view = TeamView(api)
    spectator = listen(slug)

    registered = view.call("POST", comp(slug, "/teams"), body={"teamName": "Scanners", "members": ["Ann"]}, wait=10)
    token = registered.json()["teamToken"]
    own = listen(slug, token=token)
    rival_reg = view.call("POST", comp(slug, "/teams"), body={"teamName": "Rivals"}, wait=10)
    rival = rival_reg.json()["teamToken"]
    rival_ws = listen(slug, token=rival)
    jobs = [(registered.json()["jobId"], token), (rival_reg.json()["jobId"], rival)]

    def act(method: str, path: str, who: str, body: Any = None) -> dict[str, Any]:
        job = view.act(method, comp(slug, path), who, body)
        jobs.append((job["jobId"], who))
        return job

    for who in (token, None):
        view.call("GET", comp(slug, "/questions"), who)
        view.call("GET", comp(slug, "/questions"), who, params={"kind": "mystery"})
        view.call("GET", comp(slug), who)
    assert ok_job(act("POST", "/claims", token, {"questionId": "Q1"}))["question"] == "Board question 1?"
    assert ok_job(act("POST", "/submissions", token, {"questionId": "Q1", "answer": "a guess"}))["correct"] is False
    ok_job(act("POST", "/claims", token, {"questionId": "Q2"}))
    # Answered in another case and spacing, so an echo of the team's own words is not a leak.
    assert ok_job(act("POST", "/submissions", token, {"questionId": "Q2", "answer": "  ZEBRA-7781-Q2 "}))["correct"]
    ok_job(act("POST", "/claims", rival, {"questionId": "Q3"}))
    ok_job(act("POST", "/submissions", rival, {"questionId": "Q3", "answer": "nope"}))
    failed_with(act("POST", "/submissions", token, {"questionId": "Q4", "answer": "x"}), "question_not_claimed")
    failed_with(act("POST", "/claims", token, {"questionId": "M1"}), "question_not_found")
    failed_with(act("POST", "/claims", token, {"questionId": "Q3"}), "question_already_claimed")

    box = ok_job(act("POST", "/mystery-boxes", token, {"difficulty": "EASY"}))
    view.call("GET", comp(slug, "/teams/me"), token)
    code = box["mysteryQuestionId"]
    failed_with(act("POST", "/mystery-boxes", token, {"difficulty": "EASY"}), "mystery_already_open")
    right = next(q["answer"] for q in mystery if q["questionId"] == code).upper()
    assert ok_job(act("POST", "/submissions", token, {"questionId": code, "answer": right}))["correct"]
    ok_job(act("POST", "/mystery-boxes", token, {"difficulty": "EASY"}))
    ok_job(act("DELETE", "/mystery-boxes/current", token))
    failed_with(act("DELETE", "/mystery-boxes/current", token), "no_open_mystery_box")
    third = ok_job(act("POST", "/mystery-boxes", token, {"difficulty": "EASY"}))
    assert ok_job(act("POST", "/submissions", token, {"questionId": third["mysteryQuestionId"],
                                                       "answer": "no idea"}))["correct"] is False
    ok_job(act("POST", "/mystery-boxes", rival, {"difficulty": "EASY"}))

    me = view.call("GET", comp(slug, "/teams/me"), token).json()
    view.call("GET", comp(slug, "/teams/me"), rival)
    view.call("GET", comp(slug, "/leaderboard"))
    view.call("GET", comp(slug, "/leaderboard"), token)
    for job_id, who in jobs:
        view.call("GET", f"/api/v1/jobs/{job_id}", who)
    for path in ("/questions/Q1", "/questions/export", "/ledger", "/results"):
        problem(view.call("GET", comp(slug, path), token), 403)
    problem(view.call("POST", comp(slug, "/submissions"), token, {"questionId": "Q1"}), 422)

    # Everything announced has arrived: the last job's update, the team's final score.
    last_own = next(job_id for job_id, who in reversed(jobs) if who == token)
    own.wait_event("job_update", lambda e: e["jobId"] == last_own)
    own.wait_event("time_update")
    spectator.wait_event("leaderboard_update", lambda e: ("Scanners", me["points"]) in standings_of(e))
    spectator.wait_event("question_claimed", lambda e: "Q3" in claimed_codes(e))
    rival_ws.wait_event("job_update", lambda e: e["jobId"] == jobs[-1][0])

    seen = view.bodies + [json.dumps(listener.events) for listener in (spectator, own, rival_ws)]
    leaks = [(answer, body[:300]) for body in seen for answer in answers if answer in body]
    assert leaks == []
    # The scan can find them: the organiser's view of the bank holds every answer.
    organiser = api.admin("GET", comp(slug, "/questions/export")).text
    assert all(answer in organiser for answer in answers)
    assert {name for name, _ in own.events} >= {"leaderboard_update", "job_update", "score_update", "time_update"}
