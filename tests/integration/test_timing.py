"""When a job counts as finished, when it counts as late, and when a waiting client hears of it."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from models.kinds import board_queue
from models.tables import Team
from settings import Settings
from tests.support import (
    Api,
    Db,
    TeamHandle,
    answer_of,
    expect,
    insert_job,
    ok_job,
    parse_iso,
    post_all,
    questions,
    register_teams,
    unique,
    wait_until,
)
from workers.jobs import WorkerContext, run_job


def _codes_on_one_queue(settings: Settings, competition_id: int, count: int) -> list[str]:
    bank = [q["questionId"] for q in questions(400)]
    queue = board_queue(settings, competition_id, bank[0])
    return [c for c in bank if board_queue(settings, competition_id, c) == queue][:count]


def test_finished_at_is_the_commit_of_the_batch_not_the_end_of_the_rule(api: Api, db: Db, settings: Settings) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    codes = _codes_on_one_queue(settings, competition_id, 4)
    api.add_questions(slug, [q for q in questions(400) if q["questionId"] in codes])
    blocker, *teams = register_teams(api, db, slug, [unique("block"), unique("a"), unique("b"), unique("c")])
    for team, code in zip(teams, codes[1:], strict=True):
        ok_job(api.claim(slug, team.token, code))

    # The queue's worker is held inside a batch of its own, so the three answers below wait
    # together and are applied by the next batch, one after the other.
    with db.row_locked(blocker.id):
        post_all(api, "POST", [(f"/api/v1/competitions/{slug}/claims", blocker.token, {"questionId": codes[0]})])
        wait_until(lambda: db.lock_waiters() == 1, 30, message="the worker to block")
        bodies = post_all(api, "POST", [(f"/api/v1/competitions/{slug}/submissions", t.token,
                                         {"questionId": c, "answer": answer_of(c)})
                                        for t, c in zip(teams, codes[1:], strict=True)])
    jobs = db.wait_jobs([b["jobId"] for b in bodies])
    assert {j.status for j in jobs.values()} == {"succeeded"}
    # Each answer moved its team's points at the moment its rule ran (teams.points_at is the
    # database clock then). The last rule of the batch ran after the first job's rule, so a
    # finish stamped when the first rule ended would come before it.
    moved_at = [db.team(t.id).points_at for t in teams]
    for job in jobs.values():
        assert job.finished_at is not None
        assert job.finished_at >= max(moved_at), (job.finished_at, moved_at)
    db.assert_ledger(competition_id)


def test_an_answer_sent_before_the_deadline_is_not_late_however_late_it_is_applied(
        api: Api, db: Db, settings: Settings) -> None:
    slug = api.create_competition(timeLimitSeconds=3600)["slug"]
    competition = db.competition(slug)
    api.add_questions(slug, questions(2))
    team = api.register(slug)
    ok_job(api.claim(slug, team.token, "Q1"))
    # Sent in time, one minute before the deadline...
    with db.sessions.begin() as session:
        session.execute(update(Team).where(Team.id == team.id)
                        .values(deadline=datetime.now(UTC) - timedelta(seconds=5)))
    in_time = insert_job(db, competition_id=competition.id, kind="submit", queue=unique("backlog"),
                         token=team.token, payload={"questionId": "Q1", "answer": answer_of("Q1")},
                         team_id=team.id, age_seconds=60)
    late = insert_job(db, competition_id=competition.id, kind="claim", queue=unique("backlog"),
                      token=team.token, payload={"questionId": "Q2"}, team_id=team.id)
    # ...and applied now, after the deadline (a backlog, a retry or a sweeper re-send).
    ctx = WorkerContext.create(settings)
    try:
        assert run_job(ctx, _uuid(in_time)) == "succeeded"
        assert run_job(ctx, _uuid(late)) == "failed: deadline_passed"
    finally:
        ctx.engine.dispose()
        ctx.live.redis.close()
    rows = db.jobs([in_time, late])
    assert rows[in_time].result is not None and rows[in_time].result["correct"] is True
    assert rows[late].error == {"code": "deadline_passed", "message": "the team's time is up"}
    db.assert_ledger(competition.id)


def _uuid(value: str) -> uuid.UUID:
    return uuid.UUID(value)


def test_a_waiting_client_hears_of_its_finish_within_a_second_under_a_storm(
        api: Api, db: Db, settings: Settings) -> None:
    """50 teams claim and answer with ``Prefer: wait`` on busy queues, 2,000 writes in all."""
    threads, rounds = 50, 20  # 50 x 20 x (claim + answer) = 2,000 writes
    slug = api.create_competition(maxOpenClaims=1)["slug"]
    api.add_questions(slug, questions(threads * rounds))
    teams = register_teams(api, db, slug, [unique("storm") for _ in range(threads)])
    lags: list[float] = []
    slow_202: list[float] = []
    refused: list[int] = []
    lock = threading.Lock()

    def play(index: int, team: TeamHandle) -> None:
        for r in range(rounds):
            code = f"Q{index * rounds + r + 1}"
            for path, body in (("claims", {"questionId": code}),
                               ("submissions", {"questionId": code, "answer": answer_of(code)})):
                started = time.monotonic()
                resp = api.request("POST", f"/api/v1/competitions/{slug}/{path}", token=team.token, json=body,
                                   wait=10)
                arrived = datetime.now(UTC)
                expect(resp, 200, 202)
                job = resp.json()
                with lock:
                    if resp.status_code == 200:
                        lags.append((arrived - parse_iso(job["finishedAt"])).total_seconds())
                    elif time.monotonic() - started > 1.0:
                        slow_202.append(time.monotonic() - started)
                    else:
                        refused.append(1)  # over the per-process cap of waiters: 202 at once
                if resp.status_code == 202:
                    api.wait_job(job["jobId"], team.token, timeout=60)

    workers = [threading.Thread(target=play, args=(i, t)) for i, t in enumerate(teams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)
    api.close()
    assert not any(w.is_alive() for w in workers)
    assert len(lags) + len(slow_202) + len(refused) == threads * rounds * 2
    assert not slow_202, f"{len(slow_202)} waits ended in a 202 after {max(slow_202):.1f} s: finishes were missed"
    lags.sort()
    assert lags and lags[-1] <= 1.0, (
        f"answers arrived up to {lags[-1]:.2f} s after their job finished "
        f"(p50 {lags[len(lags) // 2]:.3f} s, p99 {lags[int(len(lags) * 0.99)]:.3f} s)")
    assert lags[0] >= -0.05, f"an answer arrived {-lags[0]:.3f} s before its finishedAt"
    db.assert_ledger(db.competition(slug).id)
