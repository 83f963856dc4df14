"""At-least-once delivery made exactly-once: duplicate messages, lost messages, killed workers."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery
from sqlalchemy import func, select, text

from models.broker import Producer
from models.db import make_sessionmaker
from models.kinds import REGISTRATIONS, board_queue
from models.live import Live
from models.ranking import changed_standings
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
from workers.jobs import Absorbed, WorkerContext, run_job
from workers.sweeper import Sweeper


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
                                           sender: Producer, broker: redis.Redis) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug, "Echo")
    ok_job(api.claim(slug, team.token, "Q1"))
    job = api.submit(slug, team.token, "Q1", answer_of("Q1"))
    assert ok_job(job)["pointsEarned"] == 100
    row = db.jobs([job["jobId"]])[job["jobId"]]
    before = submission_facts(db, team.id)
    assert before == (1, [(100, "correct_answer")], 1100)

    task_ids = [send(sender, job["jobId"], "submit", row.queue) for _ in range(3)]
    wait_consumed(broker, row.queue, task_ids)

    assert submission_facts(db, team.id) == before
    again = db.jobs([job["jobId"]])[job["jobId"]]
    assert (again.status, again.attempts, again.result) == ("succeeded", 1, row.result)
    assert again.finished_at == row.finished_at
    db.assert_ledger(db.competition(slug).id)


def test_racing_deliveries_of_one_job_apply_it_once(api: Api, db: Db, settings: Settings,
                                                    competition: dict[str, Any], sender: Producer,
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
        lambda: send(sender, job_id, "submit", queue),
        lambda: send(sender, job_id, "submit", queue),
        lambda: run_job(worker_context, uuid.UUID(job_id)),
        lambda: run_job(worker_context, uuid.UUID(job_id)),
    ])
    db.wait_jobs([job_id])
    wait_consumed(broker, queue, [t for t in outcomes[:2] if t])

    # Whoever applied it, every delivery answers with the job's one outcome.
    assert outcomes[2:] == ["succeeded", "succeeded"]
    row = db.jobs([job_id])[job_id]
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert row.result is not None and row.result["pointsEarned"] == 100
    assert submission_facts(db, team.id) == (1, [(100, "correct_answer")], 1100)
    view = api.wait_job(job_id, team.token)
    assert view["result"]["totalPoints"] == 1100
    db.assert_ledger(competition_id)


def test_sweeper_resends_a_job_whose_message_was_lost(api: Api, db: Db, settings: Settings,
                                                      competition: dict[str, Any], sender: Producer) -> None:
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
        """The real sender, with a note of what the sweeper sends."""

        def send(self, job_id: str, kind: str, queue: str, request_id: str | None = None) -> None:
            sent.append(job_id)
            sender.send(job_id, kind, queue, request_id)

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


def test_sweeper_leaves_a_job_alone_while_its_queue_still_holds_messages(
        db: Db, settings: Settings, competition: dict[str, Any]) -> None:
    """With one message per job, a queue that is behind holds a message for each of its jobs, and
    the consumer applies them all when it takes the next one: a re-send per stale job would only
    double the backlog (seen from outside: 849 no-op messages added to a busy queue at once)."""
    competition_id = db.competition(competition["slug"]).id
    # A queue no consumer takes from, so the test decides what it holds.
    queue = f"board.sweeper-test-{uuid.uuid4().hex[:8]}"
    token = "behind-" + uuid.uuid4().hex
    job_id = insert_job(db, competition_id=competition_id, kind="claim", queue=queue, token=token,
                        payload={"questionId": "Q1"}, team_id=None, age_seconds=60)
    live = Live(settings)
    sent: list[str] = []

    class Recording:
        def send(self, job_id: str, kind: str, queue: str, request_id: str | None = None) -> None:
            sent.append(job_id)

    try:
        sweeper = Sweeper(settings.with_overrides(sweep_after=30.0), make_sessionmaker(db.engine), live,
                          Recording())  # type: ignore[arg-type]
        live.redis.rpush(queue, b"a message the consumer has not taken yet")
        sweeper.resend_stale_jobs()
        assert job_id not in sent
        # Redis lost its data: everything unfinished goes out again, whatever the queues hold.
        sweeper.resend_stale_jobs(everything=True)
        assert sent.count(job_id) == 1
        sent.clear()
        # Once the queue is empty and the job still is not done, its message was lost: re-sent.
        live.redis.delete(queue)
        sweeper._resent.clear()
        sweeper.resend_stale_jobs()
        assert sent == [job_id]
    finally:
        live.redis.delete(queue)
        live.redis.close()
        with db.sessions.begin() as session:
            session.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job_id})


def test_sweeper_rebuilds_a_lost_leaderboard_cache(api: Api, db: Db, settings: Settings, sender: Producer) -> None:
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
        sweeper = Sweeper(settings, make_sessionmaker(db.engine), live, sender)
        assert sweeper.refresh_leaderboards() >= 1
        assert live.top(competition_id, 10) == expected
    finally:
        live.redis.close()


def _bump(connection: Any, team_id: int, by: int) -> None:
    # What a worker's commit does to a team, without the announcement that would follow it.
    connection.execute(text("UPDATE teams SET points = points + :by, points_version = points_version + 1, "
                            "points_at = now() WHERE id = :id"), {"by": by, "id": team_id})


def test_the_sweeper_writes_what_changed_since_its_last_read_even_if_it_committed_later(
        api: Api, db: Db, settings: Settings, sender: Producer) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    for name in ("Slow", "Fast", "Still"):
        api.register(slug, name)
    with db.sessions() as session:
        ids = dict(session.execute(select(Team.name, Team.id).where(Team.competition_id == competition_id)).all())
    live = Live(settings)
    sweeper = Sweeper(settings, make_sessionmaker(db.engine), live, sender)
    try:
        sweeper.refresh_leaderboards()  # the first read of this competition: its whole board
        assert sweeper._refreshed[competition_id]
        slow = db.engine.connect()
        try:
            # A transaction that began before the next read and commits after it: a horizon by
            # clock would have to guess its length, the transaction id does not.
            slow_tx = slow.begin()
            _bump(slow, ids["Slow"], 40)
            with db.engine.begin() as fast:
                _bump(fast, ids["Fast"], 30)
            sweeper.refresh_leaderboards()
            assert {r["teamName"]: r["points"] for r in live.top(competition_id, 10)}["Fast"] == \
                db.team(ids["Fast"]).points
            slow_tx.commit()
        finally:
            slow.close()
        with db.sessions() as session:
            horizon = sweeper._refreshed[competition_id][0]
            changed = {s.name for s in changed_standings(session, competition_id, horizon)}
        # The slow writer is still to be written (it committed after the read); the untouched
        # team is not read again.
        assert "Slow" in changed and "Still" not in changed
        sweeper.refresh_leaderboards()
        assert live.top(competition_id, 10) == db.standings(competition_id, 10)
        assert [r["teamName"] for r in live.top(competition_id, 10)][:2] == ["Slow", "Fast"]
    finally:
        live.redis.close()


def test_a_worker_killed_mid_job_loses_nothing(api: Api, db: Db, settings: Settings, stack: Stack,
                                               sender: Producer) -> None:
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
    sweeper = Sweeper(settings.with_overrides(sweep_after=0.0), make_sessionmaker(db.engine), Live(settings), sender)
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


def test_one_message_applies_every_waiting_job_and_the_others_answer_from_memory(
        db: Db, settings: Settings, competition: dict[str, Any], worker_context: WorkerContext) -> None:
    """Each job has its own message, but the first one's batch applies every job waiting on the
    queue, in more than one transaction if need be; the later messages then find their job done
    and answer with its outcome without reading the database."""
    competition_id = db.competition(competition["slug"]).id
    queue = unique("registrations")  # a queue no real consumer reads
    count = settings.worker_batch_size * 2 + 7
    names = ["Backlog 0", *(f"Backlog {i}" for i in range(1, count - 1)), "Backlog 1"]  # the last one clashes
    job_ids = [
        insert_job(db, competition_id=competition_id, kind="register", queue=queue, token=f"backlog-{uuid.uuid4().hex}",
                   payload={"teamName": name, "members": [], "email": None}, team_id=None)
        for name in names
    ]
    assert run_job(worker_context, uuid.UUID(job_ids[0])) == "succeeded"
    rows = db.jobs(job_ids)
    assert sum(row.status == "succeeded" for row in rows.values()) == count - 1
    assert rows[job_ids[-1]].error["code"] == "team_name_taken"
    assert len(worker_context.finished) == count - 1

    def no_database() -> None:
        raise AssertionError("a message whose job this process just finished must not read the database")

    real = worker_context.autocommit
    worker_context.autocommit = no_database  # type: ignore[assignment]
    try:
        outcomes = [run_job(worker_context, uuid.UUID(job_id)) for job_id in job_ids[1:]]
    finally:
        worker_context.autocommit = real
    assert outcomes == ["succeeded"] * (count - 2) + ["failed: team_name_taken"]
    assert not worker_context.finished
    # A redelivery, remembered no longer, reads the row: still the same outcome, nothing applied twice.
    assert run_job(worker_context, uuid.UUID(job_ids[-1])) == "failed: team_name_taken"
    assert run_job(worker_context, uuid.uuid4()) == "missing"
    teams = db.all(select(func.count()).select_from(Team).where(Team.competition_id == competition_id))
    assert teams[0][0] == count - 1


def test_every_job_is_a_task_named_by_its_kind_with_its_outcome(
        api: Api, db: Db, competition: dict[str, Any], celery: Celery, broker: redis.Redis) -> None:
    """What Flower shows comes from the consumers' task events: one task per job, named by the job's
    kind, whose result is the job's outcome, also for the jobs another message's batch applied."""
    slug = competition["slug"]
    api.add_questions(slug, questions(3))
    seen: dict[str, dict[str, Any]] = {}

    def record(event: dict[str, Any]) -> None:
        seen.setdefault(event["uuid"], {}).update(event)

    def subscriptions() -> int:
        return int(broker.pubsub_numpat()) + len(broker.pubsub_channels())

    before = subscriptions()
    with celery.connection_for_read() as connection:
        receiver = celery.events.Receiver(connection, handlers={"task-received": record, "task-succeeded": record})
        listener = threading.Thread(target=receiver.capture, kwargs={"limit": None, "timeout": None,
                                                                     "wakeup": False}, daemon=True)
        listener.start()
        try:
            wait_until(lambda: subscriptions() > before, 10, message="the event receiver to subscribe")
            # Registrations share one queue, so some are applied by another registration's batch.
            teams = register_teams(api, db, slug, [unique("Flower") for _ in range(8)])
            claims = post_all(api, "POST", [(f"/api/v1/competitions/{slug}/claims", team.token, {"questionId": code})
                                            for team, code in zip(teams, ["Q1", "Q1", "Q2", "Q3"], strict=False)])
            claim_ids = [c["jobId"] for c in claims]
            db.wait_jobs(claim_ids)
            registration_ids = [team.registration_job for team in teams]

            def tasks_of(job_ids: list[str]) -> dict[str, dict[str, Any]]:
                return {job_id: e for e in seen.values() for job_id in job_ids
                        if job_id in str(e.get("kwargs", "")) and "result" in e}

            wait_until(lambda: len(tasks_of(claim_ids + registration_ids)) == len(claim_ids + registration_ids), 30,
                       message="a task-succeeded event for every job")
        finally:
            receiver.should_stop = True
            listener.join(5)
    claimed = tasks_of(claim_ids)
    assert {e["name"] for e in claimed.values()} == {"quiz.jobs.claim"}
    assert sorted(e["result"] for e in claimed.values()) == sorted(
        ["'succeeded'"] * 3 + ["'failed: question_already_claimed'"])
    registered = tasks_of(registration_ids)
    assert {e["name"] for e in registered.values()} <= {"quiz.jobs.register"}
    assert {e["result"] for e in registered.values()} <= {"'succeeded'"}


def test_sweeper_resends_every_unfinished_job_at_once_when_redis_lost_its_data(
        api: Api, db: Db, settings: Settings, competition: dict[str, Any]) -> None:
    competition_id = db.competition(competition["slug"]).id
    token = "after-the-flood-" + uuid.uuid4().hex
    sent: list[str] = []

    class Recording:
        def send(self, job_id: str, kind: str, queue: str, request_id: str | None = None) -> None:
            sent.append(job_id)

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


def test_a_batch_takes_the_messages_of_the_jobs_it_applied_off_its_queue(
        db: Db, competition: dict[str, Any], sender: Producer, broker: redis.Redis,
        worker_context: WorkerContext) -> None:
    """The messages of the jobs a batch applied leave the queue with it, reported to Flower as tasks;
    a message whose job the batch did not apply stays."""
    competition_id = db.competition(competition["slug"]).id
    queue = unique("absorb")  # no worker reads it: this process plays the worker
    ids = [insert_job(db, competition_id=competition_id, kind="register", queue=queue, token=unique("absorb-token"),
                      payload={"teamName": unique("Absorbed"), "members": [], "email": None}, team_id=None)
           for _ in range(5)]
    for job_id in ids:
        send(sender, job_id, "register", queue)
    stranger = str(uuid.uuid4())  # no such job: not applied, so its message must stay
    send(sender, stranger, "register", queue)
    reported: list[Absorbed] = []
    worker_context.on_absorbed = reported.extend
    try:
        # The worker has taken the oldest message off the list, as kombu does, and runs it.
        assert json.loads(broker.rpop(queue))["headers"]["id"] == ids[0]
        assert run_job(worker_context, uuid.UUID(ids[0])) == "succeeded"
        left = [json.loads(raw)["headers"]["id"] for raw in broker.lrange(queue, 0, -1)]
    finally:
        worker_context.on_absorbed = None
        broker.delete(queue)
    assert left == [stranger]
    assert sorted(a.job_id for a in reported) == sorted(ids[1:])
    assert {(a.kind, a.outcome) for a in reported} == {("register", "succeeded")}
    # Their messages will not come: nothing is kept for them.
    assert not {uuid.UUID(i) for i in ids[1:]} & worker_context.finished.keys()
    assert {row.status for row in db.jobs(ids).values()} == {"succeeded"}


def test_the_sweeper_moves_a_job_off_a_queue_no_consumer_takes(
        api: Api, db: Db, settings: Settings, competition: dict[str, Any], sender: Producer) -> None:
    """A job left on a queue beyond today's count (BOARD_QUEUES lowered while it waited) is routed
    again, as a new job would be, and applied."""
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug, unique("Moved"))
    competition_id = db.competition(slug).id
    orphan = f"board.{settings.board_queues + 3}"
    job_id = insert_job(db, competition_id=competition_id, kind="claim", queue=orphan, token=team.token,
                        payload={"questionId": "Q1"}, team_id=team.id, age_seconds=60)
    live = Live(settings)
    try:
        sweeper = Sweeper(settings.with_overrides(sweep_after=30.0), make_sessionmaker(db.engine), live, sender)
        assert sweeper.resend_stale_jobs() >= 1
        db.wait_jobs([job_id])
    finally:
        live.redis.close()
    row = db.jobs([job_id])[job_id]
    assert (row.queue, row.status) == (board_queue(settings, competition_id, "Q1"), "succeeded")
    assert row.result["questionId"] == "Q1"


def test_the_batch_finish_is_planned_afresh_for_every_batch(
        db: Db, competition: dict[str, Any], worker_context: WorkerContext) -> None:
    """A plan prepared while the jobs table was small would be kept for the connection's life and
    read the whole table for every later batch; the finish is never prepared."""
    competition_id = db.competition(competition["slug"]).id
    queue = unique("registrations")  # a queue no real consumer reads
    for i in range(8):  # psycopg prepares what runs five times
        job_id = insert_job(db, competition_id=competition_id, kind="register", queue=queue,
                            token=f"prepared-{uuid.uuid4().hex}",
                            payload={"teamName": f"Prepared {i}", "members": [], "email": None}, team_id=None)
        assert run_job(worker_context, uuid.UUID(job_id)) == "succeeded"
    prepared: list[str] = []
    # Every pooled connection the consumer's batches ran on (the pool hands the same ones back).
    connections = [worker_context.engine.connect() for _ in range(worker_context.engine.pool.size())]
    try:
        for connection in connections:
            prepared += connection.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
    finally:
        for connection in connections:
            connection.close()
    assert any("jobs" in statement for statement in prepared), prepared  # the batch's take is prepared
    assert not [s for s in prepared if "UPDATE jobs AS j" in s], prepared
