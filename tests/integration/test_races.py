"""Races the old system lost: many teams doing the same thing at the same instant."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func, select

from models.broker import Producer
from models.kinds import board_queue
from models.tables import Claim, MysteryBox, Question, ScoreEvent, Team
from settings import Settings
from tests.support import (
    Api,
    Db,
    TeamHandle,
    concurrently,
    expect,
    failed_with,
    insert_job,
    questions,
    register_teams,
    send,
    unique,
    wait_until,
)


def _job_views(api: Api, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """GET every job as its owner sees it."""
    views = []
    for job_id, token in pairs:
        resp = api.job(job_id, token)
        expect(resp, 200)
        views.append(resp.json())
    return views


def test_hundred_teams_claim_one_question(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    teams = register_teams(api, db, slug, [f"Claimer {i}" for i in range(100)])
    jobs_before = db.count_jobs()

    responses = concurrently(
        [lambda t=t: api.request("POST", f"/api/v1/competitions/{slug}/claims", token=t.token,
                                 json={"questionId": "Q1"}) for t in teams],
        api,
    )

    assert [r.status_code for r in responses] == [202] * 100
    job_ids = [r.json()["jobId"] for r in responses]
    db.wait_jobs(job_ids)
    views = _job_views(api, [(job_id, t.token) for job_id, t in zip(job_ids, teams, strict=True)])
    winners = [(v, t) for v, t in zip(views, teams, strict=True) if v["status"] == "succeeded"]
    losers = [v for v in views if v["status"] != "succeeded"]
    assert len(winners) == 1
    assert len(losers) == 99
    for view in losers:
        failed_with(view, "question_already_claimed")
    winner_view, winner = winners[0]
    assert winner_view["result"]["questionId"] == "Q1"
    assert "answer" not in winner_view["result"]

    competition_id = db.competition(slug).id
    claims = db.all(select(Claim.team_id, Question.code).join(Question, Question.id == Claim.question_id)
                    .where(Claim.competition_id == competition_id))
    assert [(c.team_id, c.code) for c in claims] == [(winner.id, "Q1")]
    assert db.count_jobs() == jobs_before + 100
    board = api.request("GET", f"/api/v1/competitions/{slug}/questions").json()["items"]
    assert [(q["questionId"], q["claimed"]) for q in board] == [("Q1", True)]


def test_two_hundred_registrations_with_repeated_names(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    unique_names = [f"Team {i} {unique('n')[-6:]}" for i in range(178)] + ["Owls", "Night Owls"]
    variants = (
        ["owls", "OWLS", "Night owls", "night  owls ", "NIGHT OWLS"]
        + [unique_names[i].upper() for i in range(0, 5)]
        + [unique_names[i].lower() for i in range(5, 10)]
        + [unique_names[i] for i in range(10, 15)]
    )
    names = unique_names + variants
    assert len(names) == 200
    assert len({" ".join(n.split()).casefold() for n in names}) == 180
    jobs_before = db.count_jobs()

    responses = concurrently([lambda n=n: api.post_registration(slug, n) for n in names], api)

    assert [r.status_code for r in responses] == [202] * 200
    bodies = [r.json() for r in responses]
    assert len({b["teamToken"] for b in bodies}) == 200
    db.wait_jobs([b["jobId"] for b in bodies])
    views = _job_views(api, [(b["jobId"], b["teamToken"]) for b in bodies])
    succeeded = [v for v in views if v["status"] == "succeeded"]
    failed = [v for v in views if v["status"] != "succeeded"]
    assert len(succeeded) == 180
    assert len(failed) == 20
    for view in failed:
        failed_with(view, "team_name_taken")

    competition_id = db.competition(slug).id
    teams = db.teams(competition_id)
    assert len(teams) == 180
    assert sorted(t.name.casefold() for t in teams) == sorted({" ".join(n.split()).casefold() for n in names})
    assert sorted(v["result"]["teamName"] for v in succeeded) == sorted(t.name for t in teams)
    assert {t.points for t in teams} == {1000}
    assert db.count_jobs() == jobs_before + 200
    # The winner of each name holds the team; every loser's token is worthless.
    for body, view in zip(bodies, views, strict=True):
        me = api.request("GET", f"/api/v1/competitions/{slug}/teams/me", token=body["teamToken"])
        if view["status"] == "succeeded":
            expect(me, 200)
            assert me.json()["teamName"] == view["result"]["teamName"]
        else:
            expect(me, 401)


def test_fifty_teams_buy_twenty_mystery_boxes(api: Api, db: Db, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(20, prefix="M", kind="mystery", difficulty="MEDIUM"))
    teams = register_teams(api, db, slug, [f"Buyer {i}" for i in range(50)])

    responses = concurrently(
        [lambda t=t: api.request("POST", f"/api/v1/competitions/{slug}/mystery-boxes", token=t.token,
                                 json={"difficulty": "MEDIUM"}) for t in teams],
        api,
    )

    assert [r.status_code for r in responses] == [202] * 50
    job_ids = [r.json()["jobId"] for r in responses]
    db.wait_jobs(job_ids)
    views = _job_views(api, [(job_id, t.token) for job_id, t in zip(job_ids, teams, strict=True)])
    succeeded = [v for v in views if v["status"] == "succeeded"]
    failed = [v for v in views if v["status"] != "succeeded"]
    assert len(succeeded) == 20
    assert len(failed) == 30
    for view in failed:
        failed_with(view, "no_mystery_left")
    drawn = [v["result"]["mysteryQuestionId"] for v in succeeded]
    assert sorted(drawn) == sorted(f"M{i}" for i in range(1, 21))
    for view in succeeded:
        assert view["result"]["deductedPoints"] == 100
        assert view["result"]["potentialPoints"] == 200

    competition_id = db.competition(slug).id
    boxes = db.all(select(MysteryBox.team_id, MysteryBox.question_id, MysteryBox.state, MysteryBox.price)
                   .where(MysteryBox.competition_id == competition_id))
    assert len(boxes) == 20
    assert len({b.question_id for b in boxes}) == 20
    assert len({b.team_id for b in boxes}) == 20
    assert {(b.state, b.price) for b in boxes} == {("open", 100)}
    buyers = {b.team_id for b in boxes}
    points = dict(db.all(select(Team.id, Team.points).where(Team.competition_id == competition_id)))
    assert Counter(points.values()) == Counter({900: 20, 1000: 30})
    assert {tid for tid, p in points.items() if p == 900} == buyers
    events = db.all(select(ScoreEvent.team_id, ScoreEvent.delta, ScoreEvent.reason)
                    .where(ScoreEvent.competition_id == competition_id))
    assert sorted(events) == sorted((tid, -100, "mystery_box") for tid in buyers)
    db.assert_ledger(competition_id)
    assert db.scalar(select(func.count()).select_from(Claim).where(Claim.competition_id == competition_id)) == 0


def test_two_workers_locking_two_teams_in_opposite_order(api: Api, db: Db, settings: Settings,
                                                         sender: Producer) -> None:
    """Board queue A takes jobs of teams X, Z, Y (in that order) in one batch, queue B jobs of
    Y, X. Every job is valid, so each must succeed at its first attempt: no deadlock."""
    slug = api.create_competition(maxOpenClaims=5)["slug"]
    competition_id = db.competition(slug).id
    bank = questions(100)
    by_queue: dict[str, list[str]] = {}
    for q in bank:
        by_queue.setdefault(board_queue(settings, competition_id, q["questionId"]), []).append(q["questionId"])
    (queue_a, codes_a), (queue_b, codes_b) = sorted(by_queue.items())[:2]
    api.add_questions(slug, [q for q in bank if q["questionId"] in codes_a[:3] + codes_b[:2]])
    # Named in id order (registrations run concurrently, so ids need not follow the names):
    # workers lock a batch's teams in id order, which is what this scenario is about.
    x, y, z = sorted(register_teams(api, db, slug, ["X-ray", "Yankee", "Zulu"]), key=lambda team: team.id)

    def claim_job(team: TeamHandle, queue: str, code: str) -> str:
        return insert_job(db, competition_id=competition_id, kind="claim", queue=queue, token=team.token,
                          payload={"questionId": code}, team_id=team.id)

    with db.row_locked(z.id):
        on_a = [claim_job(x, queue_a, codes_a[0]), claim_job(z, queue_a, codes_a[1]),
                claim_job(y, queue_a, codes_a[2])]
        on_b = [claim_job(y, queue_b, codes_b[0]), claim_job(x, queue_b, codes_b[1])]
        for job_id in on_a:
            send(sender, job_id, "claim", queue_a)
        # Worker A holds X and waits for Z (locked here).
        wait_until(lambda: db.lock_waiters() == 1, 30, message="worker A to wait for Zulu")
        for job_id in on_b:
            send(sender, job_id, "claim", queue_b)
        # Worker B holds Y and waits for X.
        wait_until(lambda: db.lock_waiters() == 2, 30, message="worker B to wait for X-ray")
    rows = db.wait_jobs(on_a + on_b)

    outcomes = {job_id: (rows[job_id].status, rows[job_id].attempts, rows[job_id].error) for job_id in rows}
    retried = {job_id: outcome for job_id, outcome in outcomes.items() if outcome != ("succeeded", 1, None)}
    assert not retried, f"(status, attempts, error) of jobs that did not succeed at once: {retried}"
    claims = db.all(select(Claim.team_id).where(Claim.competition_id == competition_id))
    assert Counter(c.team_id for c in claims) == Counter({x.id: 2, y.id: 2, z.id: 1})
