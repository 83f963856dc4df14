"""The game rules end to end: HTTP in, the job's answer out, and the database behind it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from models.tables import Claim, MysteryBox, Question, ScoreEvent, Submission, Team
from tests.support import ADMIN_TOKEN, Api, Db, answer_of, expect, failed_with, ok_job, questions, unique


def claims_of(db: Db, team_id: int) -> list[str]:
    rows = db.all(select(Question.code).join(Claim, Claim.question_id == Question.id).where(Claim.team_id == team_id))
    return sorted(r.code for r in rows)


def ledger_of(db: Db, team_id: int) -> list[tuple[int, str]]:
    rows = db.all(select(ScoreEvent.delta, ScoreEvent.reason).where(ScoreEvent.team_id == team_id)
                  .order_by(ScoreEvent.id))
    return [(r.delta, r.reason) for r in rows]


def boxes_of(db: Db, team_id: int) -> list[tuple[str, str, int, int]]:
    rows = db.all(select(Question.code, MysteryBox.state, MysteryBox.price, MysteryBox.reward)
                  .join(Question, Question.id == MysteryBox.question_id)
                  .where(MysteryBox.team_id == team_id).order_by(MysteryBox.id))
    return [tuple(r) for r in rows]


def test_registration(api: Api, db: Db) -> None:
    slug = api.create_competition(state="open")["slug"]
    resp = api.post_registration(slug, "  Night   Owls ", wait=10, members=["Ann", "Bob"], email="owls@example.org")
    expect(resp, 200)
    body = resp.json()
    assert body["status"] == "succeeded"
    assert body["teamToken"]
    result = body["result"]
    assert (result["teamName"], result["points"]) == ("Night Owls", 1000)
    team = db.team(result["teamId"])
    assert (team.name, team.members, team.email, team.points) == ("Night Owls", ["Ann", "Bob"], "owls@example.org",
                                                                   1000)
    me = api.me(slug, body["teamToken"])
    assert (me["teamName"], me["points"], me["rank"]) == ("Night Owls", 1000, 1)

    draft = api.create_competition(state="draft")["slug"]
    resp = api.post_registration(draft, "Too Early", wait=10)
    expect(resp, 200)
    failed_with(resp.json(), "registration_closed")
    assert db.teams(db.competition(draft).id) == []


def test_claim_limit(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    assert competition["maxOpenClaims"] == 1
    api.add_questions(slug, questions(3))
    team = api.register(slug)

    assert ok_job(api.claim(slug, team.token, "Q1"))["questionId"] == "Q1"
    failed_with(api.claim(slug, team.token, "Q2"), "claim_limit_reached")
    failed_with(api.claim(slug, team.token, "Q1"), "question_already_claimed")
    failed_with(api.claim(slug, team.token, "Q99"), "question_not_found")
    assert claims_of(db, team.id) == ["Q1"]

    ok_job(api.submit(slug, team.token, "Q1", "a wrong answer"))
    assert ok_job(api.claim(slug, team.token, "Q2"))["questionId"] == "Q2"
    failed_with(api.claim(slug, team.token, "Q3"), "claim_limit_reached")
    assert claims_of(db, team.id) == ["Q1", "Q2"]
    assert [q["claimed"] for q in api.request("GET", f"/api/v1/competitions/{slug}/questions").json()["items"]] == [
        True, True, False]


def test_answers(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, [
        {"questionId": "Q1", "question": "Capital of France?", "answer": "Paris", "points": 100},
        {"questionId": "Q2", "question": "Largest US city?", "answer": "New York", "points": 250},
        {"questionId": "Q3", "question": "2 + 2?", "answer": "4", "points": 50},
    ])
    alpha = api.register(slug, "Alpha")
    bravo = api.register(slug, "Bravo")

    failed_with(api.submit(slug, alpha.token, "Q1", "Paris"), "question_not_claimed")
    ok_job(api.claim(slug, bravo.token, "Q1"))
    failed_with(api.submit(slug, alpha.token, "Q1", "Paris"), "question_not_claimed")

    result = ok_job(api.submit(slug, bravo.token, "Q1", "  pARIS "))
    assert result == {"questionId": "Q1", "correct": True, "pointsEarned": 100, "totalPoints": 1100, "rank": 1}
    failed_with(api.submit(slug, bravo.token, "Q1", "Paris"), "already_answered")

    ok_job(api.claim(slug, alpha.token, "Q2"))
    result = ok_job(api.submit(slug, alpha.token, "Q2", "new\t  YORK"))
    assert result == {"questionId": "Q2", "correct": True, "pointsEarned": 250, "totalPoints": 1250, "rank": 1}

    ok_job(api.claim(slug, bravo.token, "Q3"))
    result = ok_job(api.submit(slug, bravo.token, "Q3", "five"))
    assert result == {"questionId": "Q3", "correct": False, "pointsEarned": 0, "totalPoints": 1100, "rank": 2}
    failed_with(api.submit(slug, bravo.token, "Q3", "4"), "already_answered")

    rows = db.all(select(Team.name, Question.code, Submission.answer, Submission.correct, Submission.points_awarded)
                  .join(Team, Team.id == Submission.team_id).join(Question, Question.id == Submission.question_id)
                  .where(Submission.competition_id == db.competition(slug).id).order_by(Submission.id))
    assert [tuple(r) for r in rows] == [
        ("Bravo", "Q1", "  pARIS ", True, 100),
        ("Alpha", "Q2", "new\t  YORK", True, 250),
        ("Bravo", "Q3", "five", False, 0),
    ]
    assert ledger_of(db, bravo.id) == [(100, "correct_answer")]
    assert ledger_of(db, alpha.id) == [(250, "correct_answer")]
    assert (db.team(alpha.id).points, db.team(bravo.id).points) == (1250, 1100)
    db.assert_ledger(db.competition(slug).id)


def test_mystery_box_prices_and_rewards(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    assert competition["mysteryPrices"] == {"EASY": 50, "MEDIUM": 100, "HARD": 150}
    assert competition["mysteryRewards"] == {"EASY": 100, "MEDIUM": 200, "HARD": 300}
    api.add_questions(slug, [
        *questions(1, prefix="E", kind="mystery", difficulty="EASY", points=7),
        *questions(1, prefix="M", kind="mystery", difficulty="MEDIUM", points=7),
        *questions(1, prefix="H", kind="mystery", difficulty="HARD", points=7),
    ])
    team = api.register(slug)

    bought = ok_job(api.buy_mystery(slug, team.token, "EASY"))
    assert {k: bought[k] for k in ("mysteryQuestionId", "difficulty", "deductedPoints", "potentialPoints")} == {
        "mysteryQuestionId": "E1", "difficulty": "EASY", "deductedPoints": 50, "potentialPoints": 100}
    assert bought["question"] == "What is the answer to E1?"
    assert "answer" not in bought and answer_of("E1") not in str(bought)
    assert db.team(team.id).points == 950
    failed_with(api.buy_mystery(slug, team.token, "HARD"), "mystery_already_open")
    assert api.me(slug, team.token)["openMysteryBox"]["mysteryQuestionId"] == "E1"

    assert ok_job(api.submit(slug, team.token, "E1", answer_of("E1").upper())) == {
        "questionId": "E1", "correct": True, "pointsEarned": 100, "totalPoints": 1050, "rank": 1}
    failed_with(api.submit(slug, team.token, "E1", answer_of("E1")), "already_answered")

    bought = ok_job(api.buy_mystery(slug, team.token, "MEDIUM"))
    assert (bought["mysteryQuestionId"], bought["deductedPoints"], bought["potentialPoints"]) == ("M1", 100, 200)
    assert ok_job(api.submit(slug, team.token, "M1", "no idea"))["pointsEarned"] == 0

    bought = ok_job(api.buy_mystery(slug, team.token, "HARD"))
    assert (bought["mysteryQuestionId"], bought["deductedPoints"], bought["potentialPoints"]) == ("H1", 150, 300)
    assert ok_job(api.submit(slug, team.token, "H1", answer_of("H1")))["totalPoints"] == 1100

    assert boxes_of(db, team.id) == [("E1", "answered", 50, 100), ("M1", "answered", 100, 200),
                                     ("H1", "answered", 150, 300)]
    assert ledger_of(db, team.id) == [
        (-50, "mystery_box"), (100, "mystery_correct_answer"), (-100, "mystery_box"), (-150, "mystery_box"),
        (300, "mystery_correct_answer"),
    ]
    assert db.team(team.id).points == 1100
    db.assert_ledger(db.competition(slug).id)


def test_mystery_prices_follow_the_competition(api: Api, db: Db) -> None:
    slug = api.create_competition(mysteryPrices={"EASY": 5}, mysteryRewards={"EASY": 9})["slug"]
    api.add_questions(slug, questions(1, prefix="E", kind="mystery", difficulty="EASY"))
    team = api.register(slug)
    bought = ok_job(api.buy_mystery(slug, team.token, "EASY"))
    assert (bought["deductedPoints"], bought["potentialPoints"]) == (5, 9)
    assert db.team(team.id).points == 995


def test_insufficient_points(api: Api, db: Db) -> None:
    slug = api.create_competition(startingPoints=120)["slug"]
    api.add_questions(slug, [*questions(2, prefix="E", kind="mystery", difficulty="EASY"),
                             *questions(1, prefix="M", kind="mystery", difficulty="MEDIUM"),
                             *questions(1, prefix="H", kind="mystery", difficulty="HARD")])
    team = api.register(slug)

    failed_with(api.buy_mystery(slug, team.token, "HARD"), "insufficient_points")
    assert db.team(team.id).points == 120
    assert boxes_of(db, team.id) == []
    ok_job(api.buy_mystery(slug, team.token, "EASY"))
    bought = db.team(team.id)
    assert bought.points == 70
    code = boxes_of(db, team.id)[0][0]
    assert not ok_job(api.submit(slug, team.token, code, "wrong"))["correct"]
    failed_with(api.buy_mystery(slug, team.token, "MEDIUM"), "insufficient_points")
    assert db.team(team.id).points == 70
    assert ledger_of(db, team.id) == [(-50, "mystery_box")]
    db.assert_ledger(db.competition(slug).id)


def test_forfeit_refunds_nothing_and_returns_the_question(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1, prefix="E", kind="mystery", difficulty="EASY"))
    alpha = api.register(slug, "Alpha")
    bravo = api.register(slug, "Bravo")

    assert ok_job(api.buy_mystery(slug, alpha.token, "EASY"))["mysteryQuestionId"] == "E1"
    failed_with(api.buy_mystery(slug, bravo.token, "EASY"), "no_mystery_left")
    forfeited = ok_job(api.forfeit_mystery(slug, alpha.token))
    assert (forfeited["mysteryQuestionId"], forfeited["state"]) == ("E1", "forfeited")
    assert (forfeited["deductedPoints"], forfeited["refundedPoints"]) == (50, 0)
    assert db.team(alpha.id).points == 950
    failed_with(api.forfeit_mystery(slug, alpha.token), "no_open_mystery_box")
    failed_with(api.submit(slug, alpha.token, "E1", answer_of("E1")), "question_not_claimed")
    assert api.me(slug, alpha.token)["openMysteryBox"] is None

    assert ok_job(api.buy_mystery(slug, bravo.token, "EASY"))["mysteryQuestionId"] == "E1"
    assert ok_job(api.submit(slug, bravo.token, "E1", answer_of("E1")))["totalPoints"] == 1050

    assert boxes_of(db, alpha.id) == [("E1", "forfeited", 50, 100)]
    assert boxes_of(db, bravo.id) == [("E1", "answered", 50, 100)]
    assert ledger_of(db, alpha.id) == [(-50, "mystery_box")]
    db.assert_ledger(db.competition(slug).id)


def test_mystery_draws_are_random_and_skip_what_the_team_answered(api: Api, db: Db) -> None:
    slug = api.create_competition(startingPoints=100_000)["slug"]
    api.add_questions(slug, questions(40, prefix="E", kind="mystery", difficulty="EASY"))
    api.add_questions(slug, questions(3, prefix="H", kind="mystery", difficulty="HARD"))
    team = api.register(slug)

    # A forfeit returns the question to the pool, so each of these draws is made from all 40.
    drawn = []
    for _ in range(12):
        drawn.append(ok_job(api.buy_mystery(slug, team.token, "EASY"))["mysteryQuestionId"])
        ok_job(api.forfeit_mystery(slug, team.token))
    # A fixed order (say, always the first free question) would give one code twelve times;
    # twelve random draws from 40 give at most three distinct codes about once in 10^9.
    assert len(set(drawn)) > 3, drawn

    # Answered questions, right or wrong, are never drawn again for that team.
    answered = []
    for _ in range(3):
        code = ok_job(api.buy_mystery(slug, team.token, "HARD"))["mysteryQuestionId"]
        ok_job(api.submit(slug, team.token, code, "not the answer"))
        answered.append(code)
    assert sorted(answered) == ["H1", "H2", "H3"]
    failed_with(api.buy_mystery(slug, team.token, "HARD"), "no_mystery_left")
    db.assert_ledger(db.competition(slug).id)


def test_nothing_but_registration_unless_running(api: Api, db: Db) -> None:
    competition = api.create_competition(state="open")
    slug = competition["slug"]
    api.add_questions(slug, [*questions(3), *questions(1, prefix="E", kind="mystery", difficulty="EASY")])
    team = api.register(slug)
    failed_with(api.claim(slug, team.token, "Q1"), "competition_not_running")

    api.set_state(slug, "running")
    ok_job(api.claim(slug, team.token, "Q1"))
    api.set_state(slug, "paused")
    failed_with(api.submit(slug, team.token, "Q1", answer_of("Q1")), "competition_not_running")
    failed_with(api.claim(slug, team.token, "Q2"), "competition_not_running")
    failed_with(api.buy_mystery(slug, team.token, "EASY"), "competition_not_running")

    api.set_state(slug, "running")
    assert ok_job(api.submit(slug, team.token, "Q1", answer_of("Q1")))["correct"]
    api.set_state(slug, "finished")
    failed_with(api.claim(slug, team.token, "Q2"), "competition_not_running")
    assert claims_of(db, team.id) == ["Q1"]
    assert db.team(team.id).points == 1100
    assert boxes_of(db, team.id) == []


def test_ties_go_to_who_reached_the_score_first(api: Api, db: Db) -> None:
    slug = api.create_competition(maxOpenClaims=5)["slug"]
    api.add_questions(slug, questions(4))
    alpha, bravo, charlie = (api.register(slug, name) for name in ("Alpha", "Bravo", "Charlie"))
    # Equal on 1000: registration order.
    assert [r["teamName"] for r in api.leaderboard(slug)] == ["Alpha", "Bravo", "Charlie"]

    ok_job(api.claim(slug, bravo.token, "Q2"))
    assert ok_job(api.submit(slug, bravo.token, "Q2", answer_of("Q2")))["rank"] == 1
    ok_job(api.claim(slug, alpha.token, "Q1"))
    assert ok_job(api.submit(slug, alpha.token, "Q1", answer_of("Q1")))["rank"] == 2
    ok_job(api.claim(slug, charlie.token, "Q3"))
    # A wrong answer changes nothing, not even the tie-break.
    assert ok_job(api.submit(slug, charlie.token, "Q3", "wrong"))["rank"] == 3

    board = [{"rank": 1, "teamName": "Bravo", "points": 1100}, {"rank": 2, "teamName": "Alpha", "points": 1100},
             {"rank": 3, "teamName": "Charlie", "points": 1000}]
    assert api.leaderboard(slug) == board
    assert db.standings(db.competition(slug).id, 10) == board
    assert [api.me(slug, t.token)["rank"] for t in (alpha, bravo, charlie)] == [2, 1, 3]

    first = api.request("GET", f"/api/v1/competitions/{slug}/leaderboard", params={"limit": 2}).json()
    assert first["leaderboard"] == board[:2]
    rest = api.request("GET", f"/api/v1/competitions/{slug}/leaderboard",
                       params={"limit": 2, "cursor": first["nextCursor"]}).json()
    assert rest["leaderboard"] == board[2:]
    assert rest["nextCursor"] is None


def test_prefer_wait_and_accepted(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(2))
    team = api.register(slug)
    path = f"/api/v1/competitions/{slug}/claims"

    resp = api.request("POST", path, token=team.token, json={"questionId": "Q1"})
    expect(resp, 202)
    body = resp.json()
    location = f"/api/v1/jobs/{body['jobId']}"
    assert resp.headers["Location"].endswith(location)
    assert body["links"]["job"] == location
    assert body["status"] == "queued"
    assert "Preference-Applied" not in resp.headers
    job = api.wait_job(body["jobId"], team.token)
    assert ok_job(job)["questionId"] == "Q1"
    assert api.request("GET", resp.headers["Location"], token=team.token).json() == job

    resp = api.request("POST", path, token=team.token, json={"questionId": "Q2"}, wait=0)
    expect(resp, 202)
    failed_with(api.wait_job(resp.json()["jobId"], team.token), "claim_limit_reached")

    ok_job(api.submit(slug, team.token, "Q1", "wrong"))
    resp = api.request("POST", path, token=team.token, json={"questionId": "Q2"}, wait=10)
    expect(resp, 200)
    assert resp.headers["Preference-Applied"] == "wait=10"
    assert resp.headers["Location"].endswith(resp.json()["links"]["job"])
    body = resp.json()
    assert (body["status"], body["kind"], body["result"]["questionId"]) == ("succeeded", "claim", "Q2")
    assert db.jobs([body["jobId"]])[body["jobId"]].status == "succeeded"


def test_jobs_are_private(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    alpha = api.register(slug)
    bravo = api.register(slug)
    job = api.claim(slug, alpha.token, "Q1")

    assert api.job(job["jobId"], alpha.token).json() == job
    assert api.job(job["jobId"], ADMIN_TOKEN).json() == job
    expect(api.job(job["jobId"], bravo.token), 404)
    expect(api.job(alpha.registration_job, bravo.token), 404)
    expect(api.job("00000000-0000-4000-8000-000000000000", alpha.token), 404)
    expect(api.request("GET", f"/api/v1/jobs/{job['jobId']}"), 401)
    expect(api.job(job["jobId"], "not-a-token-" + unique("x")), 401)
    problem = api.job(job["jobId"], bravo.token)
    assert problem.headers["Content-Type"].startswith("application/problem+json")
    assert "result" not in problem.json()


def test_the_board_never_shows_answers(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    secret = "x" + unique("secret")
    api.add_questions(slug, [
        {"questionId": "Q1", "question": "First?", "answer": secret + "-one", "points": 10, "category": "maths"},
        {"questionId": "Q2", "question": "Second?", "answer": secret + "-two", "points": 20},
        {"questionId": "M1", "question": "Mystery?", "answer": secret + "-three", "kind": "mystery"},
    ])
    team = api.register(slug)
    claimed = ok_job(api.claim(slug, team.token, "Q1"))
    assert secret not in str(claimed)

    path = f"/api/v1/competitions/{slug}/questions"
    for token in (None, team.token):
        resp = api.request("GET", path, token=token)
        expect(resp, 200)
        assert secret not in resp.text
        items = resp.json()["items"]
        assert [(q["questionId"], q["points"], q["claimed"]) for q in items] == [("Q1", 10, True), ("Q2", 20, False)]
        assert all("answer" not in q for q in items)
    me = api.request("GET", f"/api/v1/competitions/{slug}/teams/me", token=team.token)
    assert secret not in me.text
    # The organiser's view does carry answers: the check above can see one.
    assert secret in api.request("GET", path, token=ADMIN_TOKEN).text
