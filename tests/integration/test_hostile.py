"""Hostile teams and hostile input (issue 9): every attack tried from outside, over HTTP or
Socket.IO, then the database checked for what must (not) have changed."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import DBAPIError

from models.broker import Producer
from models.db import make_engine, make_sessionmaker
from models.live import Live
from models.tables import AuditEntry, Claim, ClaimRelease, Job, MysteryBox, Submission, Team
from settings import Settings
from tests.integration.organiser_support import (
    admin_act,
    comp,
    field_errors,
    finish_job,
    in_process_app,
    problem,
    wait_event_after,
)
from tests.support import (
    REPO,
    Api,
    Db,
    Listener,
    answer_of,
    concurrently,
    expect,
    failed_with,
    insert_job,
    ok_job,
    questions,
    send,
    unique,
    wait_until,
)
from workers.sweeper import Sweeper


@pytest.fixture
def sweeper(settings: Settings, sender: Producer) -> Iterator[Sweeper]:
    """The sweeper's passes, run on demand (the test stack has no sweeper process of its own)."""
    engine = make_engine(settings, pool_size=1)
    live = Live(settings)
    yield Sweeper(settings, make_sessionmaker(engine), live, sender)
    engine.dispose()
    live.redis.close()


def _entities(db: Db, statement: Any) -> list[Any]:
    with db.sessions() as session:
        return list(session.scalars(statement).all())


def _age_claims(db: Db, competition_id: int, seconds: int) -> None:
    # Time is the one thing a test cannot wait for: the claim is made to look old instead.
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE claims SET claimed_at = claimed_at - make_interval(secs => :s) "
                          "WHERE competition_id = :c"), {"s": seconds, "c": competition_id})


def _age_boxes(db: Db, competition_id: int, seconds: int) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE mystery_boxes SET created_at = created_at - make_interval(secs => :s) "
                          "WHERE competition_id = :c AND state = 'open'"), {"s": seconds, "c": competition_id})


def _jobs_of(db: Db, competition_id: int, kind: str) -> list[Job]:
    return _entities(db, select(Job).where(Job.competition_id == competition_id, Job.kind == kind)
                     .order_by(Job.created_at))


def _wait_jobs_of(db: Db, competition_id: int, kind: str, count: int) -> list[Job]:
    def done() -> list[Job] | None:
        jobs = _jobs_of(db, competition_id, kind)
        finished = [j for j in jobs if j.status in ("succeeded", "failed")]
        return jobs if len(jobs) >= count and len(finished) == len(jobs) else None

    return wait_until(done, 30, message=f"{count} finished {kind} job(s)")


def _audit(db: Db, competition_id: int, action: str) -> list[AuditEntry]:
    return _entities(db, select(AuditEntry)
                     .where(AuditEntry.competition_id == competition_id, AuditEntry.action == action)
                     .order_by(AuditEntry.id))


# -- 1. claims expire and can be released -----------------------------------------------------------


def test_a_late_answer_to_an_expired_claim_is_refused_before_the_sweeper_runs(api: Api, db: Db) -> None:
    slug = api.create_competition(claimTimeoutSeconds=60, maxOpenClaims=2)["slug"]
    assert api.request("GET", comp(slug)).json()["claimTimeoutSeconds"] == 60
    api.add_questions(slug, questions(2))
    team = api.register(slug)
    ok_job(api.claim(slug, team.token, "Q1"))
    competition_id = db.competition(slug).id
    _age_claims(db, competition_id, 61)

    failed_with(api.submit(slug, team.token, "Q1", answer_of("Q1")), "claim_expired")
    assert db.scalar(select(func.count()).select_from(Submission).where(Submission.team_id == team.id)) == 0
    assert db.team(team.id).points == 1000
    # Nothing released it yet: the rule alone refused the answer.
    assert db.scalar(select(func.count()).select_from(Claim).where(Claim.team_id == team.id)) == 1
    # A claim inside its time is answered as ever.
    ok_job(api.claim(slug, team.token, "Q2"))
    assert ok_job(api.submit(slug, team.token, "Q2", answer_of("Q2")))["correct"] is True


def test_the_sweeper_puts_an_expired_claim_back_on_the_board(api: Api, db: Db, sweeper: Sweeper,
                                                             listen: Callable[..., Listener]) -> None:
    slug = api.create_competition(claimTimeoutSeconds=60, maxOpenClaims=2)["slug"]
    api.add_questions(slug, questions(2))
    squatter, other = api.register(slug), api.register(slug)
    ok_job(api.claim(slug, squatter.token, "Q1"))
    ok_job(api.claim(slug, squatter.token, "Q2"))
    ok_job(api.submit(slug, squatter.token, "Q2", answer_of("Q2")))
    competition_id = db.competition(slug).id
    _age_claims(db, competition_id, 120)
    spectator = listen(slug)
    before = len(spectator.events)

    sweeper.release_expired()
    sweeper.release_expired()  # one release job per claim, however often it sweeps
    event = wait_event_after(spectator, "question_released", before)
    assert (event["questionId"], event["reason"]) == ("Q1", "expired")
    assert event["competition"] == slug and isinstance(event["seq"], int)
    [release] = _wait_jobs_of(db, competition_id, "claim_release", 1)
    assert release.status == "succeeded" and release.queue.startswith("board.")

    held = db.all(select(Claim.question_id).where(Claim.team_id == squatter.id))
    assert len(held) == 1  # Q2, answered
    [trace] = _entities(db, select(ClaimRelease).where(ClaimRelease.team_id == squatter.id))
    assert trace.reason == "expired"
    failed_with(api.submit(slug, squatter.token, "Q1", answer_of("Q1")), "claim_expired")
    assert ok_job(api.claim(slug, other.token, "Q1"))["questionId"] == "Q1"
    assert ok_job(api.submit(slug, other.token, "Q1", answer_of("Q1")))["correct"] is True
    db.assert_ledger(competition_id)


def test_claims_never_expire_with_a_null_timeout(api: Api, db: Db, sweeper: Sweeper) -> None:
    slug = api.create_competition(claimTimeoutSeconds=None)["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug)
    ok_job(api.claim(slug, team.token, "Q1"))
    competition_id = db.competition(slug).id
    _age_claims(db, competition_id, 10 * 24 * 3600)
    sweeper.release_expired()
    assert ok_job(api.submit(slug, team.token, "Q1", answer_of("Q1")))["correct"] is True
    assert not _jobs_of(db, competition_id, "claim_release")


def test_an_expired_mystery_box_is_forfeited_without_refund(api: Api, db: Db, sweeper: Sweeper) -> None:
    slug = api.create_competition(claimTimeoutSeconds=30)["slug"]
    api.add_questions(slug, questions(1, prefix="M", kind="mystery", difficulty="EASY"))
    hoarder, other = api.register(slug), api.register(slug)
    box = ok_job(api.buy_mystery(slug, hoarder.token, "EASY"))
    failed_with(api.buy_mystery(slug, other.token, "EASY"), "no_mystery_left")
    competition_id = db.competition(slug).id
    _age_boxes(db, competition_id, 31)

    failed_with(api.submit(slug, hoarder.token, box["mysteryQuestionId"], answer_of("M1")), "claim_expired")
    sweeper.release_expired()
    [expiry] = _wait_jobs_of(db, competition_id, "mystery_expire", 1)
    assert expiry.status == "succeeded" and expiry.queue.startswith("competition.")
    [row] = _entities(db, select(MysteryBox).where(MysteryBox.team_id == hoarder.id))
    assert (row.state, row.closed_reason) == ("forfeited", "expired")
    assert db.team(hoarder.id).points == 1000 - box["deductedPoints"]
    failed_with(api.submit(slug, hoarder.token, box["mysteryQuestionId"], answer_of("M1")), "claim_expired")
    # Its question is back in the pool.
    assert ok_job(api.buy_mystery(slug, other.token, "EASY"))["mysteryQuestionId"] == "M1"
    db.assert_ledger(competition_id)


def test_disqualifying_a_team_releases_its_claims_and_its_box(api: Api, db: Db,
                                                              listen: Callable[..., Listener]) -> None:
    slug = api.create_competition(maxOpenClaims=3)["slug"]
    api.add_questions(slug, questions(3) + questions(1, prefix="M", kind="mystery", difficulty="EASY"))
    cheat, other = api.register(slug), api.register(slug)
    for code in ("Q1", "Q2", "Q3"):
        ok_job(api.claim(slug, cheat.token, code))
    ok_job(api.submit(slug, cheat.token, "Q3", answer_of("Q3")))
    ok_job(api.buy_mystery(slug, cheat.token, "EASY"))
    spectator = listen(slug)
    before = len(spectator.events)

    result = ok_job(admin_act(api, "PATCH", comp(slug, f"/teams/{cheat.id}"), {"disqualified": True}))
    assert result["disqualified"] is True
    # Releases close together are coalesced: one event names the latest, ``releases`` every one.
    for code in ("Q1", "Q2"):
        event = wait_event_after(spectator, "question_released", before,
                                 lambda e, c=code: any(r["questionId"] == c for r in e["releases"]))
        assert {r["reason"] for r in event["releases"]} == {"disqualified"}
    competition_id = db.competition(slug).id
    _wait_jobs_of(db, competition_id, "claim_release", 2)
    # Only the answered claim is left.
    assert db.all(select(Claim.question_id).where(Claim.team_id == cheat.id)) == \
        db.all(select(Submission.question_id).where(Submission.team_id == cheat.id))
    [box] = _entities(db, select(MysteryBox).where(MysteryBox.team_id == cheat.id))
    assert (box.state, box.closed_reason) == ("forfeited", "disqualified")
    ok_job(api.claim(slug, other.token, "Q1"))
    assert ok_job(api.buy_mystery(slug, other.token, "EASY"))["mysteryQuestionId"] == "M1"
    [entry] = _audit(db, competition_id, "team.update")
    assert entry.outcome == "applied" and entry.after["releasedClaims"] == ["Q1", "Q2"]
    assert entry.after["forfeitedBoxes"] == 1


def test_an_organiser_releases_one_claim_and_it_is_audited(api: Api, db: Db,
                                                          listen: Callable[..., Listener]) -> None:
    slug = api.create_competition()["slug"]
    api.add_questions(slug, questions(2))
    squatter, other = api.register(slug, "Squatters"), api.register(slug)
    ok_job(api.claim(slug, squatter.token, "Q1"))
    competition_id = db.competition(slug).id
    spectator = listen(slug)
    before = len(spectator.events)
    path = comp(slug, "/claims/Q1")

    problem(api.request("DELETE", path), 401)
    problem(api.request("DELETE", path, token=squatter.token), 403)
    problem(api.admin("DELETE", comp(slug, "/claims/Q9")), 404, "question-not-found")
    problem(api.admin("DELETE", comp(slug, "/claims/%00")), 404)
    assert db.scalar(select(func.count()).select_from(Claim).where(Claim.team_id == squatter.id)) == 1

    job = ok_job(admin_act(api, "DELETE", path))
    assert (job["questionId"], job["teamName"], job["reason"]) == ("Q1", "Squatters", "organiser")
    event = wait_event_after(spectator, "question_released", before)
    assert (event["questionId"], event["reason"]) == ("Q1", "organiser")
    assert db.scalar(select(func.count()).select_from(Claim).where(Claim.team_id == squatter.id)) == 0
    failed_with(api.submit(slug, squatter.token, "Q1", answer_of("Q1")), "question_not_claimed")
    # Nobody holds it now: a second release is refused, and audited as refused.
    failed_with(admin_act(api, "DELETE", path), "question_not_claimed")
    applied, refused = _audit(db, competition_id, "claim.release")
    assert (applied.outcome, applied.before["teamName"], applied.after["released"]) == ("applied", "Squatters", True)
    assert applied.job_id is not None and applied.target == "question:Q1"
    assert (refused.outcome, refused.after["error"]["code"]) == ("refused", "question_not_claimed")
    # An unclaimed question can now be edited again, and claimed by anyone.
    expect(api.admin("PATCH", comp(slug, "/questions/Q1"), json={"answer": "changed"}), 200)
    ok_job(api.claim(slug, other.token, "Q1"))


def test_a_release_racing_an_answer_leaves_one_outcome(api: Api, db: Db) -> None:
    slug = api.create_competition(maxOpenClaims=5)["slug"]
    codes = [f"Q{i}" for i in range(1, 6)]
    api.add_questions(slug, questions(len(codes)))
    team = api.register(slug)
    for code in codes:
        ok_job(api.claim(slug, team.token, code))
    calls: list[Callable[[], dict[str, Any]]] = []
    for code in codes:
        calls.append(lambda code=code: api.submit(slug, team.token, code, answer_of(code)))
        calls.append(lambda code=code: admin_act(api, "DELETE", comp(slug, f"/claims/{code}")))
    jobs = concurrently(calls, api)
    competition_id = db.competition(slug).id
    for i, code in enumerate(codes):
        answer, release = jobs[2 * i], jobs[2 * i + 1]
        assert {answer["status"], release["status"]} == {"succeeded", "failed"}, (answer, release)
        if answer["status"] == "succeeded":
            failed_with(release, "already_answered")
        else:
            failed_with(answer, "question_not_claimed")
    submitted = db.scalar(select(func.count()).select_from(Submission).where(Submission.team_id == team.id))
    claims = db.scalar(select(func.count()).select_from(Claim).where(Claim.team_id == team.id))
    wins = sum(job["status"] == "succeeded" for job in jobs[::2])
    assert submitted == claims == wins
    assert db.team(team.id).points == 1000 + 100 * wins
    db.assert_ledger(competition_id)


# -- 2. registration can be gated ----------------------------------------------------------------------


def test_a_registration_code_gates_registration(api: Api, db: Db) -> None:
    slug = api.create_competition(registrationCode="owls-2026")["slug"]
    public = api.request("GET", comp(slug)).json()
    assert public["registrationCodeRequired"] is True and "owls-2026" not in str(public)
    competition_id = db.competition(slug).id
    for fields in ({}, {"registrationCode": "owls-2025"}, {"registrationCode": "OWLS-2026"}):
        body = problem(api.post_registration(slug, unique("gatecrasher"), **fields), 403,
                       "registration-code-invalid")
        assert "registrationCode" in field_errors(body)
    assert db.scalar(select(func.count()).select_from(Job).where(Job.competition_id == competition_id)) == 0
    assert db.teams(competition_id) == []
    team = api.register(slug, "Invited", registrationCode="owls-2026")
    assert [t.name for t in db.teams(competition_id)] == ["Invited"]
    # Lifting the code opens registration to anyone.
    assert api.patch_competition(slug, registrationCode=None)["registrationCodeRequired"] is False
    api.register(slug, "Walk-in")
    assert team.token != ""


def test_a_code_changed_after_the_request_is_checked_again_by_the_worker(api: Api, db: Db,
                                                                         sender: Producer) -> None:
    slug = api.create_competition(registrationCode="first-code")["slug"]
    competition_id = db.competition(slug).id
    # Accepted under the first code, applied after the organisers changed it.
    job_id = insert_job(db, competition_id=competition_id, kind="register", queue="registrations",
                        token=unique("token"), team_id=None,
                        payload={"teamName": "Late", "members": [], "email": None, "registrationCode": "first-code"})
    api.patch_competition(slug, registrationCode="second-code")
    send(sender, job_id, "register", "registrations")
    [job] = _wait_jobs_of(db, competition_id, "register", 1)
    assert (job.status, job.error["code"]) == ("failed", "registration_code_invalid")
    assert db.teams(competition_id) == []


def test_registrations_per_address_are_limited(settings: Settings, api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    with in_process_app(settings, rate_limit_register_ip=3, rate_limit_register_window=86400) as client:
        def register(address: str) -> Any:
            return client.simulate_post(comp(slug, "/teams"), json={"teamName": unique("bot")},
                                        remote_addr=address)

        assert [register("203.0.113.7").status_code for _ in range(3)] == [202, 202, 202]
        refused = problem(register("203.0.113.7"), 429, "too-many-requests")
        assert "registrations" in refused["detail"]
        assert register("198.51.100.9").status_code == 202
        # Other writes and reads from the limited address are not registrations.
        assert client.simulate_get(comp(slug, "/leaderboard"), remote_addr="203.0.113.7").status_code == 200
    assert len(_jobs_of(db, competition_id, "register")) == 4


def test_reads_are_rate_limited(settings: Settings, api: Api) -> None:
    slug = api.create_competition()["slug"]
    team, other = api.register(slug), api.register(slug)
    with in_process_app(settings, rate_limit_read_team=5, rate_limit_read_ip=8, rate_limit_window=3600) as client:
        def me(token: str, address: str = "203.0.113.8") -> Any:
            return client.simulate_get(comp(slug, "/teams/me"), headers={"Authorization": f"Bearer {token}"},
                                       remote_addr=address)

        assert [me(team.token).status_code for _ in range(5)] == [200] * 5
        body = problem(me(team.token), 429, "too-many-requests")
        assert "reads" in body["detail"]
        assert me(other.token).status_code == 200
        # Per address: anonymous reads too.
        assert client.simulate_get(comp(slug, "/leaderboard"), remote_addr="203.0.113.8").status_code == 200
        problem(client.simulate_get(comp(slug, "/leaderboard"), remote_addr="203.0.113.8"), 429)
        assert client.simulate_get(comp(slug, "/leaderboard"), remote_addr="203.0.113.99").status_code == 200
        # Probes and the organisers are never limited.
        for _ in range(10):
            assert client.simulate_get("/healthz", remote_addr="203.0.113.8").status_code == 200
            assert client.simulate_get(comp(slug, "/teams"), remote_addr="203.0.113.8",
                                       headers={"Authorization": f"Bearer {api.admin_token}"}).status_code == 200


# -- 3. team names are normalised -------------------------------------------------------------------


def _registration(api: Api, slug: str, name: str) -> dict[str, Any]:
    """A registration's finished job, whatever its outcome."""
    resp = api.post_registration(slug, name, wait=10)
    expect(resp, 200, 202)
    return finish_job(api, resp, resp.json()["teamToken"])


LOOK_ALIKES = ["Owls\u200b", "\uff2f\uff57\uff4c\uff53", "Ow\u200dls", "Owls\u202e", "  owls  ", "OWLS", "Ow\u00adls"]


def test_look_alike_names_are_refused(api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    api.register(slug, "Owls")
    for name in LOOK_ALIKES:
        resp = api.post_registration(slug, name, wait=10)
        if resp.status_code == 422:
            assert "teamName" in field_errors(problem(resp, 422))
        else:
            expect(resp, 200, 202)
            failed_with(finish_job(api, resp, resp.json()["teamToken"]), "team_name_taken")
    assert [t.name for t in db.teams(competition_id)] == ["Owls"]
    # Fullwidth letters and spacing are normalised, not refused.
    assert api.register(slug, "\uff26\uff41\uff4c\uff43\uff4f\uff4e   \tWing").name == "Falcon Wing"
    assert sorted(t.name_key for t in db.teams(competition_id)) == ["falcon wing", "owls"]


def test_renames_follow_the_same_rule_and_never_fail_internally(api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    first, second = api.register(slug), api.register(slug)
    renamed = ok_job(admin_act(api, "PATCH", comp(slug, f"/teams/{first.id}"), {"teamName": "İnci"}))
    assert renamed["teamName"] == "İnci"
    for clash in ("İNCI", "i\u0307nci", "İnci "):
        failed_with(admin_act(api, "PATCH", comp(slug, f"/teams/{second.id}"), {"teamName": clash}),
                    "team_name_taken")
    body = problem(api.admin("PATCH", comp(slug, f"/teams/{second.id}"), json={"teamName": "In\u200bci"}), 422)
    assert "teamName" in field_errors(body)
    failed_with(_registration(api, slug, "İNCI"), "team_name_taken")
    assert db.team(second.id).name == second.name
    assert [e.outcome for e in _audit(db, competition_id, "team.update")] == ["applied"] + ["refused"] * 3


def test_a_name_raced_by_a_registration_and_a_rename_goes_to_one_team(api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    teams = [api.register(slug) for _ in range(4)]
    for round_ in range(4):
        name = f"Racers {round_}"
        calls: list[Callable[[], dict[str, Any]]] = [
            lambda name=name: _registration(api, slug, name.upper()),
            lambda name=name: admin_act(api, "PATCH", comp(slug, f"/teams/{teams[round_].id}"),
                                        {"teamName": name}),
            lambda name=name: _registration(api, slug, f" {name.lower()} "),
        ]
        jobs = concurrently(calls, api)
        assert sorted(j["status"] for j in jobs) == ["failed", "failed", "succeeded"], jobs
        for job in jobs:
            if job["status"] == "failed":
                failed_with(job, "team_name_taken")
        key = f"racers {round_}"
        assert db.scalar(select(func.count()).select_from(Team).where(
            Team.competition_id == competition_id, Team.name_key == key)) == 1


def test_existing_look_alike_names_are_migrated_apart(test_env: dict[str, str]) -> None:
    from alembic import command

    from models.migrate import alembic_config

    server = create_engine(Settings.from_env(test_env).database_url.rsplit("/", 1)[0] + "/postgres",
                           isolation_level="AUTOCOMMIT")
    name = f"quiz_mig_{uuid.uuid4().hex[:8]}"
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = Settings.from_env(test_env).database_url.rsplit("/", 1)[0] + f"/{name}"
        settings = Settings.from_env({**test_env, "DATABASE_URL": url, "APP_DATABASE_URL": ""})
        config = alembic_config(settings)
        command.upgrade(config, "0005")
        engine = create_engine(url)
        with engine.begin() as conn:
            cid = conn.scalar(text("INSERT INTO competitions (slug, title) VALUES ('m', 'M') RETURNING id"))
            for i, team_name in enumerate(["Owls", "\uff2f\uff57\uff4c\uff53", "Ow\u200bls", "Bats"]):
                conn.execute(text("INSERT INTO teams (competition_id, name, token_hash, starting_points, points) "
                                  "VALUES (:c, :n, :h, 1000, 1000)"),
                             {"c": cid, "n": team_name, "h": hashlib.sha256(str(i).encode()).digest()})
        command.upgrade(config, "head")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT name, name_key FROM teams ORDER BY id")).all()
        engine.dispose()
        assert rows[0] == ("Owls", "owls") and rows[3] == ("Bats", "bats")
        assert len({key for _, key in rows}) == 4
        assert all("\u200b" not in n and n.isprintable() for n, _ in rows)
    finally:
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


# -- 4. tokens are never derived from client input --------------------------------------------------------


def test_a_replayed_short_key_does_not_hand_the_token_to_a_second_client(api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    body = {"teamName": unique("Owls"), "members": ["Ann"]}
    first = api.request("POST", comp(slug, "/teams"), json=body, headers={"Idempotency-Key": "1"}, wait=10)
    expect(first, 200, 202)
    token = first.json()["teamToken"]
    second = api.request("POST", comp(slug, "/teams"), json=body, headers={"Idempotency-Key": "1"})
    expect(second, 200, 202)
    assert second.json()["jobId"] == first.json()["jobId"]
    assert "teamToken" not in second.json()
    [team] = db.teams(competition_id)
    assert team.token_hash == hashlib.sha256(token.encode()).digest()
    assert api.me(slug, token)["teamName"] == body["teamName"]
    # The same key and body in another competition make another team with an unrelated token.
    elsewhere = api.create_competition()["slug"]
    third = api.request("POST", comp(elsewhere, "/teams"), json=body, headers={"Idempotency-Key": "1"})
    assert third.json()["teamToken"] != token
    assert len(_jobs_of(db, competition_id, "register")) == 1


def test_production_refuses_to_start_without_a_strong_secret(test_env: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in test_env}
    env.update({**test_env, "QUIZ_ENV": "production", "ADMIN_TOKEN": "an-organiser-token-long-enough"})
    for secret in ("", "short", "an-organiser-token-long-enough"):
        run = subprocess.run([sys.executable, "-m", "workers.sweeper"], cwd=REPO, capture_output=True, text=True,
                             env={**env, "SECRET_KEY": secret}, timeout=60, check=False)
        assert run.returncode != 0
        assert "SECRET_KEY" in run.stderr


# -- 5. exports are safe in a spreadsheet ----------------------------------------------------------------


FORMULAS = ['=HYPERLINK("http://example.org/x","open")', "+1+1", "-2+3", "@SUM(A1)"]


def _cells(resp: Any) -> list[list[str]]:
    assert resp.headers["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(resp.text)))


def test_every_export_neutralises_formulas(api: Api) -> None:
    slug = api.create_competition()["slug"]
    api.add_questions(slug, [{"questionId": "F1", "question": "=1+1", "answer": "@x", "options": ["-1", "+2"],
                              "category": "=cmd|' /C calc'!A0"}])
    team = api.register(slug, "@SUM(1+1)", members=FORMULAS)
    ok_job(admin_act(api, "POST", comp(slug, f"/teams/{team.id}/adjustments"), {"delta": 5, "reason": "=2+2"}))
    for path in ("/results?format=csv", "/ledger?format=csv", "/questions/export?format=csv"):
        rows = _cells(api.admin("GET", comp(slug, path)))
        for cell in (c for row in rows[1:] for c in row):
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (path, cell)
    results = _cells(api.admin("GET", comp(slug, "/results?format=csv")))
    header, row = results[0], results[1]
    assert row[header.index("members")].startswith("'=HYPERLINK")
    assert row[header.index("teamName")] == "'@SUM(1+1)"
    # The exported bank imports back as it was.
    exported = api.admin("GET", comp(slug, "/questions/export?format=csv")).text
    other = api.create_competition()["slug"]
    expect(api.admin("POST", comp(other, "/questions/import"), data=exported.encode(),
                     headers={"Content-Type": "text/csv"}), 201)
    again = api.admin("GET", comp(other, "/questions/F1")).json()
    assert (again["question"], again["answer"], again["options"]) == ("=1+1", "@x", ["-1", "+2"])


# -- 6. no 500 from any header, body or file --------------------------------------------------------------


def _import(api: Api, slug: str, raw: bytes) -> Any:
    return api.admin("POST", comp(slug, "/questions/import"), data=raw, headers={"Content-Type": "text/csv"})


def test_csv_files_of_every_shape_get_an_answer_in_plain_words(api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    header = "questionId,question,answer"
    for n, ending in enumerate(("\r", "\n", "\r\n")):
        text_ = ending.join([header, f"L{n}a,First?,yes", f"L{n}b,Second?,no"]) + ending
        assert _import(api, slug, text_.encode()).json()["imported"] == 2, repr(ending)
    for n, (encoding, prefix) in enumerate((("utf-16", b""), ("utf-8", b"\xef\xbb\xbf"))):
        raw = prefix + f"{header}\nE{n},Qué?,sí\n".encode(encoding)
        assert _import(api, slug, raw).status_code == 201, encoding
    assert api.admin("GET", comp(slug, "/questions/E0")).json()["question"] == "Qué?"

    latin1 = problem(_import(api, slug, f"{header}\nX1,Qué?,sí\n".encode("latin-1")), 400)
    assert "UTF-8" in latin1["detail"]
    problem(_import(api, slug, f"{header}\nX2,\x00,no\n".encode()), 400)
    huge = problem(_import(api, slug, f'{header}\nX3,"{"x" * 200_000}",no\n'.encode()), 422)
    assert "line" in huge["detail"]
    problem(_import(api, slug, f"{header}\nX4,{'y' * 6000},no\n".encode()), 422, "import-rejected")
    codes = {c for (c,) in db.all(text("SELECT code FROM questions WHERE competition_id = :c")
                                   .bindparams(c=db.competition(slug).id))}
    assert codes == {"L0a", "L0b", "L1a", "L1b", "L2a", "L2b", "E0", "E1"}


def test_headers_of_any_length_and_shape_get_a_4xx(api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug)
    prefer = "wait=" + "9" * 5000
    resp = api.request("POST", comp(slug, "/claims"), token=team.token, json={"questionId": "Q1"},
                       headers={"Prefer": prefer})
    assert resp.status_code == 200 and resp.json()["status"] == "succeeded"
    for headers in ({"Authorization": "Bearer " + "x" * 7000}, {"Authorization": "Bearer \xe9\xe8"},
                    {"Authorization": "Basic abc"}, {"Authorization": "Bearer"},
                    {"Idempotency-Key": "\x7f" * 10}, {"Prefer": "wait=-1, wait=" + "0" * 3000}):
        resp = api.request("GET", comp(slug, "/teams/me"), headers=headers)
        # Even what gunicorn itself refuses (a control character in a header) is problem+json.
        problem(resp, resp.status_code)
        assert 400 <= resp.status_code < 500, (headers.keys(), resp.status_code)
    for path in ("/api/v1/competitions/%00/leaderboard", "/api/v1/competitions/" + "a" * 5000,
                 comp(slug, "/questions/%00"), comp(slug, "/questions") + "?category=%00"):
        resp = api.admin("GET", path)
        problem(resp, resp.status_code)
        assert 400 <= resp.status_code < 500, (path[:80], resp.status_code, resp.text[:200])
        assert "psycopg" not in resp.text and "invalid byte sequence" not in resp.text and "0x00" not in resp.text
    assert db.scalar(select(func.count()).select_from(Claim).where(Claim.team_id == team.id)) == 1


# -- 7. /metrics needs a token ----------------------------------------------------------------------------


def test_metrics_need_a_token(api: Api, settings: Settings) -> None:
    slug = api.create_competition()["slug"]
    team = api.register(slug)
    problem(api.request("GET", "/metrics"), 401)
    problem(api.request("GET", "/metrics", token=team.token), 401)
    assert "quiz_jobs" in api.admin("GET", "/metrics").text
    with in_process_app(settings, metrics_token="prometheus-scrape-token-1") as client:
        ok = client.simulate_get("/metrics", headers={"Authorization": "Bearer prometheus-scrape-token-1"})
        assert ok.status_code == 200 and "quiz_queue_depth" in ok.text
        problem(client.simulate_get("/metrics", headers={"Authorization": "Bearer prometheus-scrape-token-2"}), 401)


# -- 8. cheap lookups and bounded memory ------------------------------------------------------------------


@pytest.mark.parametrize(("table", "column"), [("jobs", "owner_hash"), ("teams", "token_hash")])
def test_a_token_lookup_is_an_index_scan(db: Db, table: str, column: str) -> None:
    with db.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(r[0] for r in conn.execute(
            text(f"EXPLAIN SELECT 1 FROM {table} WHERE {column} = :h"), {"h": bytes(32)}))
    assert "Index" in plan and "Seq Scan" not in plan, plan


def test_an_unknown_token_polling_a_job_is_refused(api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    team = api.register(slug)
    problem(api.job(team.registration_job, "not-a-token"), 401)
    problem(api.job(str(uuid.uuid4()), team.token), 404)


def test_the_sweeper_purges_old_finished_jobs_only(api: Api, db: Db, sweeper: Sweeper) -> None:
    slug = api.create_competition(maxOpenClaims=2)["slug"]
    api.add_questions(slug, questions(2))
    team = api.register(slug)
    old = api.claim(slug, team.token, "Q1")
    recent = api.claim(slug, team.token, "Q2")
    ok_job(old), ok_job(recent)
    old, recent = old["jobId"], recent["jobId"]
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET finished_at = now() - interval '8 days' WHERE id IN (:a, :b)"),
                     {"a": old, "b": team.registration_job})
    purged = sweeper.purge_finished_jobs()
    assert purged >= 2
    left = {str(j) for (j,) in db.all(select(Job.id).where(Job.id.in_([old, recent, team.registration_job])))}
    assert left == {recent}
    problem(api.job(old, team.token), 404)
    # The team and its game state are untouched.
    assert api.me(slug, team.token)["claims"][0]["questionId"] in ("Q1", "Q2")
    assert len(api.me(slug, team.token)["claims"]) == 2


# -- 9. the audit log is the truth --------------------------------------------------------------------------


def test_audit_rows_record_the_outcome_once(api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    team = api.register(slug)
    competition_id = db.competition(slug).id
    path = comp(slug, f"/teams/{team.id}/adjustments")
    key = str(uuid.uuid4())
    for _ in range(3):  # a replayed request is one action
        resp = api.request("POST", path, token=api.admin_token, json={"delta": -30, "reason": "noise"},
                           headers={"Idempotency-Key": key}, wait=10)
        finish_job(api, resp, api.admin_token)
    failed_with(admin_act(api, "POST", path, {"delta": -5000, "reason": "too much"}), "insufficient_points")
    applied, refused = _audit(db, competition_id, "team.adjust")
    assert (applied.outcome, applied.before, applied.after["points"]) == ("applied", {"points": 1000}, 970)
    assert (refused.outcome, refused.after["error"]["code"]) == ("refused", "insufficient_points")
    assert applied.job_id != refused.job_id
    assert db.team(team.id).points == 970
    listed = api.admin("GET", comp(slug, "/audit"), params={"action": "team."}).json()["items"]
    assert [e["outcome"] for e in listed] == ["applied", "refused"]


def test_the_app_role_cannot_bypass_the_append_only_audit_log(settings: Settings, api: Api, db: Db) -> None:
    slug = api.create_competition()["slug"]
    assert settings.app_database_url and settings.app_database_url != settings.database_url
    app = create_engine(settings.app_database_url, isolation_level="AUTOCOMMIT")
    try:
        with app.connect() as conn:
            assert conn.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")) is False
            count = conn.scalar(text("SELECT count(*) FROM audit_log"))
            for statement in ("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
                              "DROP TRIGGER audit_log_append_only ON audit_log",
                              "SET session_replication_role = replica",
                              "UPDATE audit_log SET actor = 'someone else'",
                              "DELETE FROM audit_log", "TRUNCATE audit_log"):
                with pytest.raises(DBAPIError, match=r"must be owner|permission denied"):
                    conn.execute(text(statement))
            assert conn.scalar(text("SELECT count(*) FROM audit_log")) == count
        # And the stack does connect as it.
        users = {u for (u,) in db.all(text("SELECT DISTINCT usename FROM pg_stat_activity "
                                           "WHERE datname = current_database()"))}
        assert app.url.username in users
    finally:
        app.dispose()
    assert api.request("GET", comp(slug)).status_code == 200
