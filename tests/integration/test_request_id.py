"""Every API response names its request: the client's X-Request-ID when sane, or a new one; the events a
write's job causes carry it too."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.support import Api, Listener, answer_of, questions, unique


def test_the_clients_request_id_comes_back(api: Api, competition: dict[str, str]) -> None:
    resp = api.request("GET", f"/api/v1/competitions/{competition['slug']}/leaderboard",
                       headers={"X-Request-ID": "venue-lb-0042"})
    assert resp.status_code == 200
    assert resp.headers["X-Request-ID"] == "venue-lb-0042"


def test_a_request_without_one_gets_a_new_one_even_when_it_fails(api: Api) -> None:
    ids = set()
    for path, status in (("/healthz", 200), ("/api/v1/no-such-route", 404), ("/api/v1/jobs/" + "0" * 32, 401)):
        resp = api.request("GET", path)
        assert resp.status_code == status, resp.text
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"]), resp.headers
        ids.add(resp.headers["X-Request-ID"])
    assert len(ids) == 3


def test_a_forged_request_id_is_replaced(api: Api) -> None:
    resp = api.request("GET", "/healthz", headers={"X-Request-ID": "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])


def test_a_writes_request_id_reaches_the_events_its_job_causes(api: Api, listen: Callable[..., Listener]) -> None:
    slug = api.create_competition(unique("rid"))["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug, unique("owls"))
    own = listen(slug, token=team.token)
    base = f"/api/v1/competitions/{slug}"
    claim = api.request("POST", base + "/claims", token=team.token, json={"questionId": "Q1"},
                        headers={"X-Request-ID": "venue-claim-0001"}).json()
    update = own.wait_event("job_update", lambda e: e["jobId"] == claim["jobId"])
    assert update["requestId"] == "venue-claim-0001"

    answer = api.request("POST", base + "/submissions", token=team.token,
                         json={"questionId": "Q1", "answer": answer_of("Q1")},
                         headers={"X-Request-ID": "venue-answer-0002"}).json()
    assert own.wait_event("job_update", lambda e: e["jobId"] == answer["jobId"])["requestId"] == "venue-answer-0002"
    assert own.wait_event("score_update")["requestId"] == "venue-answer-0002"

