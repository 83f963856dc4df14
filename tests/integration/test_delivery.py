"""At-least-once delivery made exactly-once: duplicate messages, lost messages, killed workers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import func, select

from models.db import make_sessionmaker
from models.live import Live
from models.tables import Claim, ScoreEvent, Submission, Team
from settings import Settings
from tests.support import (
    Api,
    Db,
    Stack,
    TeamHandle,
    answer_of,
    concurrently,
    insert_job,
    ok_job,
    post_all,
    questions,
    register_teams,
    send,
    token_digest,
    unique,
    wait_until,
)
from workers.jobs import WorkerContext, run_job
from workers.routing import REGISTRATIONS, board_queue
from workers.sweeper import Sweeper


@pytest.fixture
def broker(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def _pending_task_ids(broker: redis.Redis, queue: str) -> set[str]:
    """Task ids still waiting on ``queue`` or taken but not yet acknowledged (kombu's Redis layout)."""
    waiting = [json.loads(raw) for raw in broker.lrange(queue, 0, -1)]
    taken = [json.loads(raw)[0] for raw in broker.hvals("unacked")]
    return {m["headers"]["id"] for m in waiting + taken}


def wait_consumed(broker: redis.Redis, queue: str, task_ids: Iterable[str], timeout: float = 30.0) -> None:
    """The tasks have run: acks are late, so a task leaves the unacked set only after it ran."""
    ids = set(task_ids)
    streak = []

    def gone() -> bool:
        # Seen gone twice, 50 ms apart: closes the instant between a worker's BRPOP and the
        # message being recorded as unacked.
        streak.append(not ids & _pending_task_ids(broker, queue))
        return len(streak) >= 2 and streak[-1] and streak[-2]

    wait_until(gone, timeout, message=f"tasks on {queue} to be consumed")


def submission_facts(db: Db, team_id: int) -> tuple[int, list[tuple[int, str]], int]:
    """(submission rows, ledger rows, points) of a team."""
    submissions = db.scalar(select(func.count()).select_from(Submission).where(Submission.team_id == team_id))
    events = db.all(select(ScoreEvent.delta, ScoreEvent.reason).where(ScoreEvent.team_id == team_id)
                    .order_by(ScoreEvent.id))
    return int(submissions), [(e.delta, e.reason) for e in events], db.team(team_id).points


def test_a_redelivered_job_is_applied_once(api: Api, db: Db, settings: Settings, competition: dict[str, Any],
                                           celery: Celery, broker: redis.Redis) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug, "Echo")
    ok_job(api.claim(slug, team.token, "Q1"))
    job = api.submit(slug, team.token, "Q1", answer_of("Q1"))
    assert ok_job(job)["pointsEarned"] == 100
    row = db.jobs([job["jobId"]])[job["jobId"]]
    before = submission_facts(db, team.id)
    assert before == (1, [(100, "correct_answer")], 1100)

    task_ids = [send(celery, job["jobId"], "submit", row.queue) for _ in range(3)]
    wait_consumed(broker, row.queue, task_ids)

    assert submission_facts(db, team.id) == before
    again = db.jobs([job["jobId"]])[job["jobId"]]
    assert (again.status, again.attempts, again.result) == ("succeeded", 1, row.result)
    assert again.finished_at == row.finished_at
    db.assert_ledger(db.competition(slug).id)


def test_racing_deliveries_of_one_job_apply_it_once(api: Api, db: Db, settings: Settings,
                                                    competition: dict[str, Any], celery: Celery,
                                                    broker: redis.Redis, worker_context: WorkerContext) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug, "Foxtrot")
    ok_job(api.claim(slug, team.token, "Q1"))
    competition_id = db.competition(slug).id
    queue = board_queue(settings, competition_id, "Q1")
    job_id = insert_job(db, competition_id=competition_id, kind="submit", queue=queue, token=team.token,
                        payload={"questionId": "Q1", "answer": answer_of("Q1")}, team_id=team.id)

    # Two deliveries to the real worker and two in this process, all at once.
    outcomes: list[str | None] = concurrently([
        lambda: send(celery, job_id, "submit", queue),
        lambda: send(celery, job_id, "submit", queue),
        lambda: run_job(worker_context, uuid.UUID(job_id)),
        lambda: run_job(worker_context, uuid.UUID(job_id)),
    ])
    db.wait_jobs([job_id])
    wait_consumed(broker, queue, [t for t in outcomes[:2] if t])

    in_process = [s for s in outcomes[2:] if s is not None]
    assert in_process in ([], ["succeeded"])
    row = db.jobs([job_id])[job_id]
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert row.result is not None and row.result["pointsEarned"] == 100
    assert submission_facts(db, team.id) == (1, [(100, "correct_answer")], 1100)
    view = api.wait_job(job_id, team.token)
    assert view["result"]["totalPoints"] == 1100
    db.assert_ledger(competition_id)


def test_sweeper_resends_a_job_whose_message_was_lost(api: Api, db: Db, settings: Settings,
                                                      competition: dict[str, Any], celery: Celery) -> None:
    slug = competition["slug"]
    competition_id = db.competition(slug).id
    token = "lost-registration-" + uuid.uuid4().hex
    job_id = insert_job(db, competition_id=competition_id, kind="register", queue=REGISTRATIONS, token=token,
                        payload={"teamName": "Lost and Found", "members": [], "email": None}, team_id=None,
                        age_seconds=60)
    fresh_id = insert_job(db, competition_id=competition_id, kind="register", queue=REGISTRATIONS,
                          token=token + "-fresh", payload={"teamName": "Just Queued", "members": [], "email": None},
                          team_id=None)
    assert api.job(job_id, token).json()["status"] == "queued"
    engine_sessions = make_sessionmaker(db.engine)
    live = Live(settings)
    sent: list[str] = []

    class Recording:
        """The real Celery app, with a note of what the sweeper sends."""

        def send_task(self, name: str, kwargs: dict[str, Any], queue: str) -> None:
            sent.append(kwargs["job_id"])
            celery.send_task(name, kwargs=kwargs, queue=queue)

    try:
        recording: Any = Recording()
        sweeper = Sweeper(settings.with_overrides(sweep_after=30.0), engine_sessions, live, recording)
        assert sweeper.resend_stale_jobs() >= 1
        assert job_id in sent
        assert fresh_id not in sent  # younger than sweep_after: maybe just not taken yet

        view = api.wait_job(job_id, token)
        assert ok_job(view)["teamName"] == "Lost and Found"
        team = db.all(select(Team.name, Team.points).where(Team.competition_id == competition_id,
                                                           Team.token_hash == token_digest(token)))
        assert [tuple(t) for t in team] == [("Lost and Found", 1000)]
        assert api.me(slug, token)["teamName"] == "Lost and Found"

        # Finished jobs are not sent again.
        sent.clear()
        sweeper.resend_stale_jobs()
        assert job_id not in sent
    finally:
        live.redis.close()


def test_sweeper_rebuilds_a_lost_leaderboard_cache(api: Api, db: Db, settings: Settings, celery: Celery) -> None:
    slug = api.create_competition(maxOpenClaims=3)["slug"]
    competition_id = db.competition(slug).id
    api.add_questions(slug, questions(3, points=lambda i: 10 * i))
    teams = [api.register(slug, name) for name in ("One", "Two", "Three")]
    for team, code in zip(teams, ("Q1", "Q3", "Q2"), strict=True):
        ok_job(api.claim(slug, team.token, code))
        ok_job(api.submit(slug, team.token, code, answer_of(code)))
    expected = db.standings(competition_id, 10)
    assert [r["teamName"] for r in expected] == ["Two", "Three", "One"]
    live = Live(settings)
    try:
        assert live.top(competition_id, 10) == expected
        live.clear(competition_id)  # as after a Redis restart
        assert live.top(competition_id, 10) == []
        sweeper = Sweeper(settings, make_sessionmaker(db.engine), live, celery)
        assert sweeper.refresh_leaderboards() >= 1
        assert live.top(competition_id, 10) == expected
    finally:
        live.redis.close()


def test_a_worker_killed_mid_job_loses_nothing(api: Api, db: Db, settings: Settings, stack: Stack,
                                               celery: Celery) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    queue = board_queue(settings, competition_id, "Q1")
    codes = [q["questionId"] for q in questions(200) if board_queue(settings, competition_id, q["questionId"]) == queue]
    codes = codes[:12]
    api.add_questions(slug, [q for q in questions(200) if q["questionId"] in codes])
    teams: list[TeamHandle] = register_teams(api, db, slug, [f"Survivor {i}" for i in range(len(codes))])
    worker = stack.worker(queue)

    # The first team's row is locked here, so the worker blocks inside that team's claim:
    # mid-job, transaction open, message taken but not acknowledged.
    with db.row_locked(teams[0].id):
        first = post_all(api, "POST", [(f"/api/v1/competitions/{slug}/claims", teams[0].token,
                                        {"questionId": codes[0]})])
        wait_until(lambda: db.lock_waiters() == 1, 30, message="the worker to block")
        rest = post_all(api, "POST", [(f"/api/v1/competitions/{slug}/claims", t.token, {"questionId": c})
                                      for t, c in zip(teams[1:], codes[1:], strict=True)])
        worker.kill()
    job_ids = [b["jobId"] for b in first + rest]
    assert all(j.status == "queued" for j in db.jobs(job_ids).values())

    stack.start_worker(queue)
    stack.wait_workers([queue])
    # The killed worker's message sits unacknowledged until the broker's visibility timeout;
    # the sweeper re-sends whatever is still unfinished.
    sweeper = Sweeper(settings.with_overrides(sweep_after=0.0), make_sessionmaker(db.engine), Live(settings), celery)
    try:
        sweeper.resend_stale_jobs()
        rows = db.wait_jobs(job_ids, timeout=60)
    finally:
        sweeper.live.redis.close()

    assert {j.status for j in rows.values()} == {"succeeded"}
    claims = db.all(select(Claim.team_id, Claim.question_id).where(Claim.competition_id == competition_id))
    assert len(claims) == len(codes)
    assert {c.team_id for c in claims} == {t.id for t in teams}
    assert len({c.question_id for c in claims}) == len(codes)


def test_jobs_committed_while_the_queue_is_awake_need_no_message_of_their_own(
        api: Api, db: Db, settings: Settings, competition: dict[str, Any], celery: Celery) -> None:
    """While the wake flag is set the API sends no message; the one message that set it makes
    the worker drain every waiting job, in more than one batch if need be."""
    slug = competition["slug"]
    competition_id = db.competition(slug).id
    live = Live(settings)
    try:
        assert live.wake(REGISTRATIONS, ttl_ms=60_000)  # as if the API had just sent a message
        assert not live.wake(REGISTRATIONS)  # ...so the next jobs get none
        count = settings.worker_batch_size * 2 + 7
        tokens = [f"awake-{uuid.uuid4().hex}" for _ in range(count)]
        job_ids = [
            insert_job(db, competition_id=competition_id, kind="register", queue=REGISTRATIONS, token=token,
                       payload={"teamName": f"Awake {i}", "members": [], "email": None}, team_id=None)
            for i, token in enumerate(tokens)
        ]
        send(celery, job_ids[0], "register", REGISTRATIONS)
        rows = db.wait_jobs(job_ids)
        assert {row.status for row in rows.values()} == {"succeeded"}
        assert not live.redis.exists(f"{settings.redis_prefix}:wake:{REGISTRATIONS}")
        teams = db.all(select(func.count()).select_from(Team).where(Team.competition_id == competition_id))
        assert teams[0][0] == count
    finally:
        live.redis.close()


def test_sweeper_resends_every_unfinished_job_at_once_when_redis_lost_its_data(
        api: Api, db: Db, settings: Settings, competition: dict[str, Any]) -> None:
    competition_id = db.competition(competition["slug"]).id
    token = "after-the-flood-" + uuid.uuid4().hex
    sent: list[str] = []

    class Recording:
        def send_task(self, name: str, kwargs: dict[str, Any], queue: str) -> None:
            sent.append(kwargs["job_id"])

    live = Live(settings)
    try:
        recording: Any = Recording()
        # An hour before a job counts as lost: only the flood can make this sweeper send it.
        sweeper = Sweeper(settings.with_overrides(sweep_after=3600.0), make_sessionmaker(db.engine), live, recording)
        sweeper.sweep_once()
        job_id = insert_job(db, competition_id=competition_id, kind="register", queue=unique("flooded"),
                            token=token, payload={"teamName": "Flood", "members": [], "email": None}, team_id=None)
        sweeper.sweep_once()
        assert job_id not in sent
        live.redis.delete(f"{settings.redis_prefix}:sweeper:alive")  # as a Redis restarted empty leaves it
        sweeper.sweep_once()
        assert job_id in sent
        sent.clear()
        sweeper.sweep_once()
        assert job_id not in sent  # once, not every sweep
    finally:
        live.redis.close()


def test_a_consumer_that_starts_applies_what_waits_on_its_queue(api: Api, db: Db, settings: Settings,
                                                                stack: Stack) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    api.add_questions(slug, questions(1))
    team = api.register(slug)
    queue = board_queue(settings, competition_id, "Q1")
    stack.worker(queue).stop()
    # A claim committed while the queue's consumer was down, its message lost: nothing will ever
    # deliver it but the consumer's own start (the sweeper is not running in this stack).
    job_id = insert_job(db, competition_id=competition_id, kind="claim", queue=queue, token=team.token,
                        payload={"questionId": "Q1"}, team_id=team.id, age_seconds=1)
    stack.start_worker(queue)
    rows = db.wait_jobs([job_id], timeout=60)
    assert rows[job_id].status == "succeeded"
