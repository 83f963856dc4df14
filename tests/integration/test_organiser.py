"""The organiser's side (issue 4): the competition state machine, the question bank, time
limits, team management, the leaderboard freeze, results and the audit log."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from models.tables import AuditEntry, Question
from tests.integration.organiser_support import (
    admin_act,
    board_names,
    claimed_codes,
    comp,
    events_named,
    field_errors,
    mark,
    problem,
    standings_of,
    wait_event_after,
)
from tests.support import (
    Api,
    Db,
    Listener,
    TeamHandle,
    answer_of,
    expect,
    failed_with,
    ok_job,
    parse_iso,
    questions,
    unique,
    wait_until,
)

STATES = ("draft", "open", "running", "paused", "finished")
ALLOWED = {
    "draft": ["open"],
    "open": ["running", "finished"],
    "running": ["paused", "finished"],
    "paused": ["running", "finished"],
    "finished": [],
}
PATH_TO = {
    "draft": [],
    "open": ["open"],
    "running": ["open", "running"],
    "paused": ["open", "running", "paused"],
    "finished": ["open", "running", "finished"],
}


def competition_in(api: Api, state: str, **settings: Any) -> str:
    slug = api.create_competition(state="draft", **settings)["slug"]
    for step in PATH_TO[state]:
        api.set_state(slug, step)
    assert api.request("GET", comp(slug)).json()["state"] == state
    return slug


def answer_right(api: Api, slug: str, team: TeamHandle, code: str) -> dict[str, Any]:
    ok_job(api.claim(slug, team.token, code))
    result = ok_job(api.submit(slug, team.token, code, answer_of(code)))
    assert result["correct"] is True
    return result


def audit_entries(api: Api, slug: str, **params: Any) -> list[dict[str, Any]]:
    resp = api.admin("GET", comp(slug, "/audit"), params={"limit": 200, **params})
    expect(resp, 200)
    return resp.json()["items"]


# -- the competition state machine --------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), [(s, t) for s, t in itertools.product(STATES, STATES) if s != t])
def test_each_state_transition_is_allowed_or_refused(api: Api, listen: Callable[..., Listener],
                                                     source: str, target: str) -> None:
    slug = competition_in(api, source)
    spectator = listen(slug)
    organiser = listen(slug, token=api.admin_token)
    for listener in (spectator, organiser):
        listener.wait_event("leaderboard_update")
    start = mark(spectator)
    resp = api.admin("PATCH", comp(slug), json={"state": target})
    if target in ALLOWED[source]:
        expect(resp, 200)
        assert resp.json()["state"] == target
        for listener in (spectator, organiser):
            event = listener.wait_event("competition_state", lambda e: e["state"] == target)
            assert event["competition"] == slug
            assert isinstance(event["seq"], int)
            parse_iso(event["at"])
        assert [e["state"] for e in events_named(spectator, "competition_state", start)] == [target]
        entry = audit_entries(api, slug, action="competition.update")[-1]
        assert (entry["before"]["state"], entry["after"]["state"]) == (source, target)
        return
    body = problem(resp, 409, "illegal-transition")
    assert body["state"] == source
    assert body["allowed"] == ALLOWED[source]
    for allowed in ALLOWED[source]:
        assert allowed in body["detail"]
    assert api.request("GET", comp(slug)).json()["state"] == source
    # Nothing was announced: the next event the spectator sees is the one after a legal change.
    if ALLOWED[source]:
        api.set_state(slug, ALLOWED[source][0])
        spectator.wait_event("competition_state", lambda e: e["state"] == ALLOWED[source][0])
    else:
        api.patch_competition(slug, freeze=True)
        api.patch_competition(slug, freeze=False)
        wait_event_after(spectator, "leaderboard_update", start)
    assert [e["state"] for e in events_named(spectator, "competition_state", start)] == ALLOWED[source][:1]


@pytest.mark.parametrize("state", STATES)
def test_registration_only_while_open_or_running(api: Api, state: str) -> None:
    slug = competition_in(api, state)
    resp = api.post_registration(slug, unique("late"), wait=10)
    expect(resp, 200, 202)
    job = resp.json()
    if job["status"] not in ("succeeded", "failed"):
        job = api.wait_job(job["jobId"], job["teamToken"])
    if state in ("open", "running"):
        assert ok_job(job)["registered"] is True
    else:
        failed_with(job, "registration_closed")
        assert state in job["error"]["message"]


@pytest.mark.parametrize("state", ["open", "paused", "finished"])
def test_game_actions_are_refused_outside_running(api: Api, state: str) -> None:
    slug = competition_in(api, "open")
    api.add_questions(slug, questions(2) + questions(1, prefix="M", kind="mystery", difficulty="EASY"))
    team = api.register(slug)
    if state != "open":
        api.set_state(slug, "running")
        ok_job(api.claim(slug, team.token, "Q2"))
        for step in PATH_TO[state][2:]:
            api.set_state(slug, step)
    failed_with(api.claim(slug, team.token, "Q1"), "competition_not_running")
    failed_with(api.submit(slug, team.token, "Q2", answer_of("Q2")), "competition_not_running")
    failed_with(api.buy_mystery(slug, team.token, "EASY"), "competition_not_running")
    assert api.me(slug, team.token)["points"] == 1000


def test_a_claim_while_paused_fails_and_succeeds_after_resume(api: Api, db: Db) -> None:
    slug = competition_in(api, "running")
    api.add_questions(slug, questions(1))
    team = api.register(slug)
    api.set_state(slug, "paused")
    failed_with(api.claim(slug, team.token, "Q1"), "competition_not_running")
    board = api.request("GET", comp(slug, "/questions")).json()["items"]
    assert [(q["questionId"], q["claimed"]) for q in board] == [("Q1", False)]
    api.set_state(slug, "running")
    assert ok_job(api.claim(slug, team.token, "Q1"))["questionId"] == "Q1"
    assert ok_job(api.submit(slug, team.token, "Q1", answer_of("Q1")))["totalPoints"] == 1100
    db.assert_ledger(db.competition(slug).id)


def test_competition_settings_are_read_updated_listed_and_applied(api: Api) -> None:
    slug = unique("settings")
    created = api.admin("POST", "/api/v1/competitions", json={
        "slug": slug, "title": "Settings", "startingPoints": 500, "mysteryPrices": {"EASY": 20}})
    expect(created, 201)
    assert created.headers["Location"] == f"/api/v1/competitions/{slug}"
    assert created.json()["state"] == "draft"
    assert created.json()["mysteryPrices"] == {"EASY": 20, "MEDIUM": 100, "HARD": 150}
    updated = api.patch_competition(slug, title="Renamed", startingPoints=800, maxOpenClaims=2,
                                    wrongAnswerPenalty=30, leaderboardSize=2, timeLimitSeconds=3600,
                                    deadlineBonusSeconds=90, mysteryPrices={"HARD": 400},
                                    mysteryRewards={"EASY": 60})
    expected = {"title": "Renamed", "startingPoints": 800, "maxOpenClaims": 2, "wrongAnswerPenalty": 30,
                "leaderboardSize": 2, "timeLimitSeconds": 3600, "deadlineBonusSeconds": 90,
                "mysteryPrices": {"EASY": 20, "MEDIUM": 100, "HARD": 400},
                "mysteryRewards": {"EASY": 60, "MEDIUM": 200, "HARD": 300}}
    read = api.request("GET", comp(slug)).json()
    for key, value in expected.items():
        assert updated[key] == value == read[key], key
    listed, cursor = [], None
    while True:
        page = api.admin("GET", "/api/v1/competitions",
                         params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()
        listed += [c for c in page["items"] if c["slug"] == slug]
        if (cursor := page["nextCursor"]) is None:
            break
    assert listed == [read]

    api.set_state(slug, "open")
    api.set_state(slug, "running")
    api.add_questions(slug, questions(4) + questions(1, prefix="M", kind="mystery", difficulty="EASY"))
    teams = [api.register(slug, f"Setter {i}") for i in range(3)]
    team = teams[0]
    assert api.me(slug, team.token)["points"] == 800
    assert 3590 <= api.me(slug, team.token)["remainingSeconds"] <= 3600
    ok_job(api.claim(slug, team.token, "Q1"))
    ok_job(api.claim(slug, team.token, "Q2"))
    failed_with(api.claim(slug, team.token, "Q3"), "claim_limit_reached")
    assert ok_job(api.submit(slug, team.token, "Q1", "wrong"))["pointsEarned"] == -30
    box = ok_job(api.buy_mystery(slug, team.token, "EASY"))
    assert (box["deductedPoints"], box["potentialPoints"]) == (20, 60)
    assert len(api.leaderboard(slug)) == 2


# -- the question bank ------------------------------------------------------------------------------


def test_question_crud(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    body = {"questionId": "Q1", "question": "6 x 7?", "answer": "42", "points": 150, "options": ["41", "42"],
            "difficulty": "EASY", "category": "maths"}
    created = api.admin("POST", comp(slug, "/questions"), json=body)
    expect(created, 201)
    assert created.headers["Location"] == comp(slug, "/questions/Q1")
    view = {**body, "kind": "board"}
    assert created.json() == view
    assert api.admin("GET", comp(slug, "/questions/Q1")).json() == {**view, "claimed": False}

    patched = api.admin("PATCH", comp(slug, "/questions/Q1"), json={
        "question": "7 x 6?", "answer": "forty-two", "points": 200, "options": [], "difficulty": "HARD",
        "category": "arithmetic"})
    expect(patched, 200)
    changed = {**view, "question": "7 x 6?", "answer": "forty-two", "points": 200, "options": [],
               "difficulty": "HARD", "category": "arithmetic"}
    assert patched.json() == changed
    assert api.admin("GET", comp(slug, "/questions/Q1")).json() == {**changed, "claimed": False}
    assert "points" in field_errors(problem(api.admin("PATCH", comp(slug, "/questions/Q1"), json={"points": -1}),
                                            422))

    many = api.admin("POST", comp(slug, "/questions"), json=questions(3, prefix="M", kind="mystery"))
    expect(many, 201)
    assert many.json()["count"] == 3
    assert [q["kind"] for q in many.json()["items"]] == ["mystery"] * 3

    deleted = api.admin("DELETE", comp(slug, "/questions/Q1"))
    assert deleted.status_code == 204 and not deleted.content
    problem(api.admin("GET", comp(slug, "/questions/Q1")), 404, "question-not-found")
    problem(api.admin("DELETE", comp(slug, "/questions/Q1")), 404)
    problem(api.admin("PATCH", comp(slug, "/questions/Q1"), json={"points": 1}), 404)
    bank = api.admin("GET", comp(slug, "/questions")).json()["items"]
    assert [q["questionId"] for q in bank] == ["M1", "M2", "M3"]


def test_question_lists_filter_and_paginate(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    bank = [
        {"questionId": "Q1", "question": "q", "answer": "a", "difficulty": "EASY", "category": "maths"},
        {"questionId": "Q2", "question": "q", "answer": "a", "difficulty": "HARD", "category": "science"},
        {"questionId": "Q3", "question": "q", "answer": "a", "difficulty": "EASY", "category": "science"},
        {"questionId": "Q4", "question": "q", "answer": "a", "difficulty": "MEDIUM"},
        {"questionId": "M1", "question": "q", "answer": "a", "difficulty": "EASY", "category": "maths",
         "kind": "mystery"},
        {"questionId": "M2", "question": "q", "answer": "a", "difficulty": "HARD", "kind": "mystery"},
    ]
    api.add_questions(slug, bank)
    team = api.register(slug)
    ok_job(api.claim(slug, team.token, "Q1"))
    assert ok_job(api.buy_mystery(slug, team.token, "EASY"))["mysteryQuestionId"] == "M1"

    def codes(**params: Any) -> list[str]:
        resp = api.admin("GET", comp(slug, "/questions"), params=params)
        expect(resp, 200)
        return [q["questionId"] for q in resp.json()["items"]]

    assert codes(kind="board") == ["Q1", "Q2", "Q3", "Q4"]
    assert codes(kind="mystery") == ["M1", "M2"]
    assert codes(difficulty="EASY") == ["Q1", "Q3", "M1"]
    assert codes(category="science") == ["Q2", "Q3"]
    assert codes(claimed="true") == ["Q1", "M1"]
    assert codes(claimed="false") == ["Q2", "Q3", "Q4", "M2"]
    assert codes(kind="board", claimed="false", difficulty="EASY") == ["Q3"]
    items = api.admin("GET", comp(slug, "/questions")).json()["items"]
    assert {q["questionId"]: q["claimed"] for q in items} == {
        "Q1": True, "Q2": False, "Q3": False, "Q4": False, "M1": True, "M2": False}

    pages, cursor = [], None
    while True:
        page = api.admin("GET", comp(slug, "/questions"),
                         params={"kind": "board", "limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        pages.append([q["questionId"] for q in page["items"]])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert [code for page in pages for code in page] == ["Q1", "Q2", "Q3", "Q4"]
    assert all(len(page) <= 1 for page in pages)

    for params, field in [({"kind": "riddle"}, "kind"), ({"difficulty": "easy"}, "difficulty"),
                          ({"claimed": "perhaps"}, "claimed")]:
        body = problem(api.admin("GET", comp(slug, "/questions"), params=params), 400)
        assert field in body.get("detail", "") + str(body.get("errors", "")), body


def _csv_body(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["questionId", "question", "answer", "points", "difficulty", "category", "kind", "options"])
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _bank(api: Api, slug: str) -> list[dict[str, Any]]:
    resp = api.admin("GET", comp(slug, "/questions/export"))
    expect(resp, 200)
    return resp.json()["items"]


def test_an_import_with_one_bad_row_imports_nothing_and_names_the_row(api: Api, db: Db,
                                                                       competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1, prefix="OLD"))
    rows = [["C1", "One?", "1", "10", "EASY", "", "board", ""],
            ["C2", "Two?", "2", "20", "MEDIUM", "", "board", ""],
            ["C3", "Three?", "3", "lots", "HARD", "", "board", ""],
            ["C4", "Four?", "4", "40", "HARD", "", "mystery", ""]]
    resp = api.admin("POST", comp(slug, "/questions/import"), data=_csv_body(rows),
                     headers={"Content-Type": "text/csv"})
    body = problem(resp, 422, "import-rejected")
    assert [e.get("row") for e in body["errors"]] == ["3"]
    assert body["errors"][0]["field"].startswith("row 3")
    assert "nothing was imported" in body["detail"]

    items = [{"questionId": "J1", "question": "One?", "answer": "1"},
             {"questionId": "J2", "question": "Two?"},
             {"questionId": "J3", "question": "Three?", "answer": "3", "difficulty": "TRIVIAL"},
             {"questionId": "OLD1", "question": "Again?", "answer": "x"},
             {"questionId": "J1", "question": "Once more?", "answer": "1"}]
    resp = api.admin("POST", comp(slug, "/questions/import"), json=items)
    body = problem(resp, 422, "import-rejected")
    rows_named = {e["row"]: e["field"] for e in body["errors"]}
    assert set(rows_named) == {"2", "3", "4", "5"}
    assert "answer" in body["errors"][[e["row"] for e in body["errors"]].index("2")]["message"]

    assert [q["questionId"] for q in _bank(api, slug)] == ["OLD1"]
    competition_id = db.competition(slug).id
    assert db.scalar(select(func.count()).select_from(Question).where(Question.competition_id == competition_id)) == 1
    assert not audit_entries(api, slug, action="questions.import")


def test_a_good_import_imports_every_row_and_exports_round_trip(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    rows = [["C1", "Capital of France?", "Paris", "10", "EASY", "geography", "board", "Paris|Lyon|Nice"],
            ["C2", "2, 3, 5, 7, next?", "11", "", "", "", "", ""],
            ["C3", "Formula?", "=1+1", "30", "HARD", "", "mystery", ""]]
    resp = api.admin("POST", comp(slug, "/questions/import"), data=_csv_body(rows),
                     headers={"Content-Type": "text/csv; charset=utf-8"})
    expect(resp, 201)
    assert resp.json() == {"imported": 3, "errors": []}
    json_rows = {"items": [{"questionId": "J1", "question": "JSON one?", "answer": "yes", "points": 5,
                            "options": ["yes", "no"], "kind": "mystery", "difficulty": "EASY"}]}
    resp = api.admin("POST", comp(slug, "/questions/import"), json=json_rows)
    expect(resp, 201)
    assert resp.json()["imported"] == 1

    bank = _bank(api, slug)
    assert bank == [
        {"questionId": "C1", "question": "Capital of France?", "options": ["Paris", "Lyon", "Nice"],
         "answer": "Paris", "points": 10, "difficulty": "EASY", "category": "geography", "kind": "board"},
        {"questionId": "C2", "question": "2, 3, 5, 7, next?", "options": [], "answer": "11", "points": 100,
         "difficulty": "MEDIUM", "category": None, "kind": "board"},
        {"questionId": "C3", "question": "Formula?", "options": [], "answer": "=1+1", "points": 30,
         "difficulty": "HARD", "category": None, "kind": "mystery"},
        {"questionId": "J1", "question": "JSON one?", "options": ["yes", "no"], "answer": "yes", "points": 5,
         "difficulty": "EASY", "category": None, "kind": "mystery"},
    ]
    exported = api.admin("GET", comp(slug, "/questions/export"), params={"format": "csv"})
    expect(exported, 200)
    assert exported.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in exported.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["questionId"] for r in table] == ["C1", "C2", "C3", "J1"]
    assert table[0]["options"] == "Paris|Lyon|Nice"
    assert table[0]["points"] == "10"
    # A spreadsheet must not run a cell as a formula.
    assert table[2]["answer"] == "'=1+1"

    copy = api.create_competition()["slug"]
    resp = api.admin("POST", comp(copy, "/questions/import"), data=exported.content,
                     headers={"Content-Type": "text/csv"})
    expect(resp, 201)
    assert [q for q in _bank(api, copy) if q["questionId"] != "C3"] == [q for q in bank if q["questionId"] != "C3"]
    entries = audit_entries(api, slug, action="questions.import")
    assert [e["after"]["count"] for e in entries] == [3, 1]


def test_a_used_question_keeps_its_answer_and_cannot_be_deleted(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(3) + questions(1, prefix="M", kind="mystery", difficulty="EASY"))
    team = api.register(slug)
    answer_right(api, slug, team, "Q2")
    ok_job(api.claim(slug, team.token, "Q1"))
    ok_job(api.buy_mystery(slug, team.token, "EASY"))
    for code in ("Q1", "Q2", "M1"):
        assert api.admin("GET", comp(slug, f"/questions/{code}")).json()["claimed"] is True
        problem(api.admin("DELETE", comp(slug, f"/questions/{code}")), 409, "question-in-use")
        for change in ({"answer": "something else"}, {"points": 1}, {"kind": "mystery" if code[0] == "Q" else "board"}):
            problem(api.admin("PATCH", comp(slug, f"/questions/{code}"), json=change), 409, "question-in-use")
        fixed = api.admin("GET", comp(slug, f"/questions/{code}")).json()
        assert (fixed["answer"], fixed["points"]) == (answer_of(code), 100)
    typo = api.admin("PATCH", comp(slug, "/questions/Q1"), json={"question": "What is the answer to Q1, really?"})
    expect(typo, 200)
    assert typo.json()["answer"] == answer_of("Q1")
    ok_job(api.submit(slug, team.token, "Q1", answer_of("Q1")))
    assert api.admin("DELETE", comp(slug, "/questions/Q3")).status_code == 204


# -- time limits --------------------------------------------------------------------------------------


def _past(deadline: str, margin: float = 0.3) -> bool:
    return datetime.now(UTC) > parse_iso(deadline) + timedelta(seconds=margin)


def test_the_deadline_is_enforced(api: Api) -> None:
    slug = api.create_competition(timeLimitSeconds=3)["slug"]
    api.add_questions(slug, questions(2) + questions(1, prefix="M", kind="mystery", difficulty="EASY"))
    team = api.register(slug)
    ok_job(api.claim(slug, team.token, "Q1"))
    me = api.me(slug, team.token)
    registered = parse_iso(api.admin("GET", comp(slug, f"/teams/{team.id}")).json()["registeredAt"])
    assert abs((parse_iso(me["deadline"]) - registered).total_seconds() - 3) < 0.5
    wait_until(lambda: _past(me["deadline"]), timeout=10, message="the team's deadline")
    failed_with(api.submit(slug, team.token, "Q1", answer_of("Q1")), "deadline_passed")
    failed_with(api.claim(slug, team.token, "Q2"), "deadline_passed")
    failed_with(api.buy_mystery(slug, team.token, "EASY"), "deadline_passed")
    after = api.me(slug, team.token)
    assert (after["remainingSeconds"], after["points"]) == (0, 1000)
    # Others still play: the limit is per team, from its registration.
    late = api.register(slug)
    ok_job(api.claim(slug, late.token, "Q2"))


def test_a_correct_mystery_answer_extends_the_deadline(api: Api, listen: Callable[..., Listener]) -> None:
    slug = api.create_competition(timeLimitSeconds=5, deadlineBonusSeconds=600)["slug"]
    api.add_questions(slug, questions(1) + questions(2, prefix="M", kind="mystery", difficulty="EASY"))
    spectator = listen(slug)
    team = api.register(slug)
    own = listen(slug, token=team.token)
    first = api.me(slug, team.token)["deadline"]
    code = ok_job(api.buy_mystery(slug, team.token, "EASY"))["mysteryQuestionId"]
    assert ok_job(api.submit(slug, team.token, code, answer_of(code)))["correct"] is True

    update = own.wait_event("time_update")
    extended = parse_iso(first) + timedelta(seconds=600)
    assert parse_iso(update["deadline"]) == extended
    assert 595 <= update["remainingSeconds"] <= 605
    assert update["competition"] == slug
    assert parse_iso(api.me(slug, team.token)["deadline"]) == extended
    # A wrong answer extends nothing.
    other = ok_job(api.buy_mystery(slug, team.token, "EASY"))["mysteryQuestionId"]
    assert ok_job(api.submit(slug, team.token, other, "no idea"))["correct"] is False
    assert parse_iso(api.me(slug, team.token)["deadline"]) == extended

    wait_until(lambda: _past(first), timeout=15, message="the original deadline")
    ok_job(api.claim(slug, team.token, "Q1"))
    assert len(own.of("time_update")) == 1
    assert spectator.of("time_update") == []


# -- the leaderboard freeze -------------------------------------------------------------------------


def test_a_freeze_hides_later_scores_from_spectators_but_not_organisers(api: Api,
                                                                         listen: Callable[..., Listener]) -> None:
    slug = api.create_competition()["slug"]
    api.add_questions(slug, questions(6))
    alpha, bravo = api.register(slug, "Alpha"), api.register(slug, "Bravo")
    spectator = listen(slug)
    organiser = listen(slug, token=api.admin_token)
    answer_right(api, slug, alpha, "Q1")
    spectator.wait_event("leaderboard_update", lambda e: standings_of(e)[:1] == [("Alpha", 1100)])

    frozen = api.patch_competition(slug, freeze=True)
    assert frozen["freezeAt"] is not None
    at_freeze = [("Alpha", 1100), ("Bravo", 1000)]
    seen, seen_by_organiser = mark(spectator), mark(organiser)
    answer_right(api, slug, bravo, "Q2")
    answer_right(api, slug, bravo, "Q3")
    live = [("Bravo", 1200), ("Alpha", 1100)]

    wait_event_after(organiser, "leaderboard_update", seen_by_organiser, lambda e: standings_of(e) == live)
    wait_event_after(organiser, "score_update", seen_by_organiser,
                     lambda e: (e["teamName"], e["points"]) == ("Bravo", 1200))
    admin_view = api.admin("GET", comp(slug, "/leaderboard")).json()
    assert [(r["teamName"], r["points"]) for r in admin_view["leaderboard"]] == live
    public = api.request("GET", comp(slug, "/leaderboard")).json()
    assert public["frozen"] is True
    assert parse_iso(public["frozenAt"]) == parse_iso(frozen["freezeAt"])
    assert [(r["teamName"], r["points"]) for r in public["leaderboard"]] == at_freeze
    late_spectator = listen(slug)
    assert standings_of(late_spectator.wait_event("leaderboard_update")) == at_freeze
    # A later event in the public room, so anything sent there before it has arrived.
    ok_job(api.claim(slug, alpha.token, "Q4"))
    wait_event_after(spectator, "question_claimed", seen, lambda e: "Q4" in claimed_codes(e))
    assert events_named(spectator, "leaderboard_update", seen) == []
    assert events_named(spectator, "score_update") == []

    revealed_from = mark(spectator)
    unfrozen = api.patch_competition(slug, freeze=False)
    assert unfrozen["freezeAt"] is None
    reveal = wait_event_after(spectator, "leaderboard_update", revealed_from)
    assert standings_of(reveal) == live
    ok_job(api.claim(slug, bravo.token, "Q5"))
    wait_event_after(spectator, "question_claimed", revealed_from, lambda e: "Q5" in claimed_codes(e))
    assert len(events_named(spectator, "leaderboard_update", revealed_from)) == 1
    public = api.request("GET", comp(slug, "/leaderboard")).json()
    assert (public["frozen"], [(r["teamName"], r["points"]) for r in public["leaderboard"]]) == (False, live)


# -- teams: disqualify, reinstate, rename, adjust ------------------------------------------------------


def test_disqualification_removes_a_team_until_it_is_reinstated(api: Api, listen: Callable[..., Listener]) -> None:
    slug = api.create_competition()["slug"]
    api.add_questions(slug, questions(4) + questions(2, prefix="M", kind="mystery", difficulty="EASY"))
    alpha = api.register(slug, "Alpha")
    for name in ("Bravo", "Charlie"):
        api.register(slug, name)
    ok_job(api.buy_mystery(slug, alpha.token, "EASY"))
    ok_job(api.claim(slug, alpha.token, "Q2"))
    spectator = listen(slug)
    before = mark(spectator)

    job = admin_act(api, "PATCH", comp(slug, f"/teams/{alpha.id}"), {"disqualified": True})
    assert ok_job(job)["disqualified"] is True and ok_job(job)["rank"] is None
    assert "Alpha" not in [r["teamName"] for r in api.leaderboard(slug)]
    assert [r["rank"] for r in api.leaderboard(slug)] == [1, 2]
    update = wait_event_after(spectator, "leaderboard_update", before, lambda e: "Alpha" not in board_names(e))
    assert sorted(board_names(update)) == ["Bravo", "Charlie"]
    # Its claim goes back to the board (its box is forfeited with it).
    wait_event_after(spectator, "question_released", before,
                     lambda e: (e["questionId"], e["reason"]) == ("Q2", "disqualified"))
    me = api.me(slug, alpha.token)
    assert (me["disqualified"], me["rank"]) == (True, None)
    row = api.admin("GET", comp(slug, f"/teams/{alpha.id}")).json()
    assert (row["disqualified"], row["rank"]) == (True, None)
    failed_with(api.claim(slug, alpha.token, "Q3"), "team_disqualified")
    failed_with(api.submit(slug, alpha.token, "Q2", answer_of("Q2")), "team_disqualified")
    failed_with(api.buy_mystery(slug, alpha.token, "EASY"), "team_disqualified")
    failed_with(api.forfeit_mystery(slug, alpha.token), "team_disqualified")
    results = api.admin("GET", comp(slug, "/results")).json()["standings"]
    assert results[-1]["teamName"] == "Alpha" and results[-1]["rank"] is None

    back = mark(spectator)
    ok_job(admin_act(api, "PATCH", comp(slug, f"/teams/{alpha.id}"), {"disqualified": False}))
    assert "Alpha" in [r["teamName"] for r in api.leaderboard(slug)]
    wait_event_after(spectator, "leaderboard_update", back, lambda e: "Alpha" in board_names(e))
    assert api.me(slug, alpha.token)["rank"] is not None
    ok_job(api.claim(slug, alpha.token, "Q2"))
    assert ok_job(api.submit(slug, alpha.token, "Q2", answer_of("Q2")))["correct"] is True
    assert api.leaderboard(slug)[0] == {"rank": 1, "teamName": "Alpha", "points": 1050}


def test_renaming_a_team_shows_in_the_leaderboard(api: Api, listen: Callable[..., Listener]) -> None:
    slug = api.create_competition()["slug"]
    alpha, bravo = api.register(slug, "Alpha"), api.register(slug, "Bravo")
    spectator = listen(slug)
    before = mark(spectator)
    result = ok_job(admin_act(api, "PATCH", comp(slug, f"/teams/{bravo.id}"), {"teamName": "  Bravo   Two "}))
    assert (result["teamName"], result["changes"]) == ("Bravo Two", ["renamed"])
    assert sorted(r["teamName"] for r in api.leaderboard(slug)) == ["Alpha", "Bravo Two"]
    update = wait_event_after(spectator, "leaderboard_update", before, lambda e: "Bravo Two" in board_names(e))
    assert "Bravo" not in board_names(update)
    assert api.me(slug, bravo.token)["teamName"] == "Bravo Two"
    failed_with(admin_act(api, "PATCH", comp(slug, f"/teams/{bravo.id}"), {"teamName": "ALPHA"}), "team_name_taken")
    assert "teamName" in field_errors(problem(api.admin("PATCH", comp(slug, f"/teams/{bravo.id}"),
                                                        json={"teamName": "   "}), 422))
    problem(api.admin("PATCH", comp(slug, "/teams/999999999"), json={"teamName": "Ghost"}), 404, "team-not-found")
    other = api.create_competition()["slug"]
    problem(api.admin("PATCH", comp(other, f"/teams/{alpha.id}"), json={"teamName": "Moved"}), 404)
    assert api.me(slug, alpha.token)["teamName"] == "Alpha"


def test_an_adjustment_reaches_the_ledger_the_leaderboard_and_score_updates(
        api: Api, db: Db, listen: Callable[..., Listener]) -> None:
    slug = api.create_competition()["slug"]
    team = api.register(slug, "Adjusted")
    api.register(slug, "Bystander")
    own = listen(slug, token=team.token)
    organiser = listen(slug, token=api.admin_token)
    spectator = listen(slug)
    start = mark(spectator)

    job = admin_act(api, "POST", comp(slug, f"/teams/{team.id}/adjustments"),
                    {"delta": -50, "reason": "answer shouted across the room"})
    result = ok_job(job)
    assert (result["points"], result["delta"], result["reason"]) == (950, -50, "answer shouted across the room")
    for listener in (own, organiser):
        update = listener.wait_event("score_update", lambda e: e["delta"] == -50)
        assert (update["teamName"], update["points"], update["rank"]) == ("Adjusted", 950, 2)
        assert "answer shouted across the room" in update["reason"]
    wait_event_after(spectator, "leaderboard_update", start, lambda e: ("Adjusted", 950) in standings_of(e))
    assert api.leaderboard(slug) == [{"rank": 1, "teamName": "Bystander", "points": 1000},
                                     {"rank": 2, "teamName": "Adjusted", "points": 950}]

    ledger = api.admin("GET", comp(slug, "/ledger")).json()["items"]
    rows = [r for r in ledger if r["teamId"] == team.id and r["delta"] != 0]
    assert [(r["delta"], r["pointsAfter"], r["reason"]) for r in rows] == \
        [(-50, 950, "adjustment: answer shouted across the room")]
    assert rows[0]["reference"] == f"adjustment:{job['jobId']}"
    mine = api.admin("GET", comp(slug, "/ledger"), params={"teamId": team.id}).json()["items"]
    assert {r["teamId"] for r in mine} == {team.id}
    table = list(csv.DictReader(io.StringIO(api.admin("GET", comp(slug, "/ledger"), params={"format": "csv"}).text)))
    assert any(r["teamName"] == "Adjusted" and r["delta"] == "-50" and r["pointsAfter"] == "950" for r in table)

    ok_job(admin_act(api, "POST", comp(slug, f"/teams/{team.id}/adjustments"), {"delta": 200, "reason": "bonus"}))
    failed_with(admin_act(api, "POST", comp(slug, f"/teams/{team.id}/adjustments"),
                          {"delta": -5000, "reason": "too much"}), "insufficient_points")
    assert api.me(slug, team.token)["points"] == 1150
    for body, field in [({"delta": 10}, "reason"), ({"delta": 10, "reason": "   "}, "reason"),
                        ({"reason": "x"}, "delta"), ({"delta": 10**7, "reason": "x"}, "delta")]:
        resp = api.admin("POST", comp(slug, f"/teams/{team.id}/adjustments"), json=body)
        assert field in field_errors(problem(resp, 422)), body
    assert events_named(spectator, "score_update") == []
    db.assert_ledger(db.competition(slug).id)


def test_the_team_list_shows_points_rank_claims_and_answers(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(3))
    alpha, bravo = api.register(slug, "Alpha", members=["Ann"], email="a@x.example"), api.register(slug, "Bravo")
    answer_right(api, slug, alpha, "Q1")
    ok_job(api.claim(slug, bravo.token, "Q2"))
    ok_job(api.submit(slug, bravo.token, "Q2", "wrong"))
    ok_job(api.claim(slug, bravo.token, "Q3"))
    items = api.admin("GET", comp(slug, "/teams")).json()["items"]
    summary = [(t["teamName"], t["points"], t["rank"], t["claims"], t["answers"], t["correctAnswers"]) for t in items]
    assert summary == [("Alpha", 1100, 1, 1, 1, 1), ("Bravo", 1000, 2, 2, 1, 0)]
    assert (items[0]["members"], items[0]["email"]) == (["Ann"], "a@x.example")


# -- audit log ----------------------------------------------------------------------------------------


def test_every_organiser_action_is_in_the_audit_log(api: Api) -> None:
    slug = unique("audited")
    expect(api.admin("POST", "/api/v1/competitions", json={"slug": slug, "title": "Audited"}), 201)
    api.patch_competition(slug, maxOpenClaims=2)
    api.set_state(slug, "open")
    api.set_state(slug, "running")
    api.add_questions(slug, questions(3))
    expect(api.admin("POST", comp(slug, "/questions/import"),
                     json=[{"questionId": "I1", "question": "Imported?", "answer": "yes"}]), 201)
    expect(api.admin("PATCH", comp(slug, "/questions/Q2"), json={"answer": "new answer"}), 200)
    assert api.admin("DELETE", comp(slug, "/questions/Q3")).status_code == 204
    team = api.register(slug, "Audited Team")
    ok_job(api.claim(slug, team.token, "Q1"))
    ok_job(admin_act(api, "POST", comp(slug, f"/teams/{team.id}/adjustments"), {"delta": 5, "reason": "tidy"}))
    ok_job(admin_act(api, "PATCH", comp(slug, f"/teams/{team.id}"), {"teamName": "Audited Two"}))
    api.patch_competition(slug, freeze=True)
    api.set_state(slug, "finished")
    for path in ("/results", "/ledger", "/questions/export", "/teams"):
        expect(api.admin("GET", comp(slug, path)), 200)

    entries = audit_entries(api, slug)
    assert [e["action"] for e in entries] == [
        "competition.create", "competition.update", "competition.update", "competition.update",
        "questions.create", "questions.import", "question.update", "question.delete", "team.adjust",
        "team.update", "competition.update", "competition.update",
    ]
    assert {e["actor"] for e in entries} == {"admin"}
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    for entry in entries:
        parse_iso(entry["at"])
    create, settings, opened, running, added, imported, edited, removed, adjusted, renamed, freeze, finish = entries
    assert (create["before"], create["after"]["slug"], create["target"]) == (None, slug, slug)
    assert (settings["before"]["maxOpenClaims"], settings["after"]["maxOpenClaims"]) == (1, 2)
    assert [(e["before"]["state"], e["after"]["state"]) for e in (opened, running, finish)] == \
        [("draft", "open"), ("open", "running"), ("running", "finished")]
    assert added["after"]["questionIds"] == ["Q1", "Q2", "Q3"]
    assert imported["after"]["count"] == 1
    assert (edited["target"], edited["before"]["answer"], edited["after"]["answer"]) == \
        ("question:Q2", answer_of("Q2"), "new answer")
    assert (removed["target"], removed["before"]["questionId"], removed["after"]) == ("question:Q3", "Q3", None)
    assert (adjusted["target"], adjusted["before"], adjusted["after"]["delta"]) == \
        (f"team:{team.id}", {"points": 1000}, 5)
    assert (renamed["before"]["teamName"], renamed["after"]["teamName"]) == ("Audited Team", "Audited Two")
    assert (freeze["before"]["freezeAt"], freeze["after"]["freezeAt"] is not None) == (None, True)

    assert [e["action"] for e in audit_entries(api, slug, action="question.")] == ["question.update",
                                                                                    "question.delete"]
    assert [e["action"] for e in audit_entries(api, slug, action="team")] == ["team.adjust", "team.update"]
    since = audit_entries(api, slug, since=adjusted["at"])
    assert [e["id"] for e in since][:1] == [adjusted["id"]] and len(since) == 4
    problem(api.admin("GET", comp(slug, "/audit"), params={"since": "last tuesday"}), 400)
    page = api.admin("GET", comp(slug, "/audit"), params={"limit": 5}).json()
    assert len(page["items"]) == 5 and page["nextCursor"]


def test_the_audit_log_refuses_update_and_delete(api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    count = db.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.competition_id == competition_id))
    assert count >= 3
    for statement in ("UPDATE audit_log SET actor = 'someone else' WHERE competition_id = :c",
                      "DELETE FROM audit_log WHERE competition_id = :c"):
        with db.engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
            conn.execute(text(statement), {"c": competition_id})
    assert db.scalar(select(func.count()).select_from(AuditEntry)
                     .where(AuditEntry.competition_id == competition_id)) == count
    assert {e["actor"] for e in audit_entries(api, slug)} == {"admin"}


def test_the_audit_log_refuses_truncate(db: Db) -> None:
    # Append-only means the whole table too: TRUNCATE skips row triggers. Rolled back either way.
    with db.engine.connect() as conn:
        transaction = conn.begin()
        try:
            with pytest.raises(DBAPIError, match="append-only"):
                conn.execute(text("TRUNCATE audit_log"))
        finally:
            transaction.rollback()


# -- results ------------------------------------------------------------------------------------------


def test_results_match_the_standings_in_json_and_csv(api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    api.add_questions(slug, questions(3))
    _, bravo, charlie, delta, _ = (
        api.register(slug, name) for name in ("Alpha", "Bravo", "Charlie", "Delta", "=HYPERLINK(1)"))
    answer_right(api, slug, bravo, "Q1")
    answer_right(api, slug, charlie, "Q2")
    ok_job(admin_act(api, "POST", comp(slug, f"/teams/{charlie.id}/adjustments"), {"delta": 25, "reason": "style"}))
    answer_right(api, slug, delta, "Q3")
    ok_job(admin_act(api, "PATCH", comp(slug, f"/teams/{delta.id}"), {"disqualified": True}))
    api.set_state(slug, "finished")

    resp = api.admin("GET", comp(slug, "/results"))
    expect(resp, 200)
    results = resp.json()
    assert (results["competition"], results["state"]) == (slug, "finished")
    standings = results["standings"]
    expected = db.standings(db.competition(slug).id, 100)
    assert [{"rank": r["rank"], "teamName": r["teamName"], "points": r["points"]} for r in standings[:-1]] == expected
    assert [(r["teamName"], r["points"]) for r in standings] == [
        ("Charlie", 1125), ("Bravo", 1100), ("Alpha", 1000), ("=HYPERLINK(1)", 1000), ("Delta", 1100)]
    assert [r["rank"] for r in standings] == [1, 2, 3, 4, None]
    assert standings[-1]["disqualified"] is True
    assert [(r["teamName"], r["points"]) for r in api.leaderboard(slug)] == \
        [(r["teamName"], r["points"]) for r in standings[:-1]]
    assert [t["teamId"] for t in api.admin("GET", comp(slug, "/teams")).json()["items"]] == \
        [r["teamId"] for r in standings]

    download = api.admin("GET", comp(slug, "/results"), params={"format": "csv"})
    expect(download, 200)
    assert download.headers["Content-Type"].startswith("text/csv")
    assert f"{slug}-results.csv" in download.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(download.text)))
    assert [(r["rank"], r["teamName"], r["points"], r["disqualified"]) for r in table] == [
        ("1", "Charlie", "1125", "False"), ("2", "Bravo", "1100", "False"), ("3", "Alpha", "1000", "False"),
        ("4", "'=HYPERLINK(1)", "1000", "False"), ("", "Delta", "1100", "True")]
    assert [r["teamId"] for r in table] == [str(r["teamId"]) for r in standings]
    ledger = list(csv.DictReader(io.StringIO(api.admin("GET", comp(slug, "/ledger"),
                                                       params={"format": "csv"}).text)))
    by_team: dict[str, int] = {}
    for row in ledger:
        by_team[row["teamId"]] = by_team.get(row["teamId"], 0) + int(row["delta"])
    for row in standings:
        assert 1000 + by_team.get(str(row["teamId"]), 0) == row["points"], row
