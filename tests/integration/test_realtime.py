"""Socket.IO: who may connect, what each room hears, and how a burst is coalesced."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import socketio
from sqlalchemy import select

from models.broker import Producer
from models.kinds import board_queue
from models.live import Live
from models.tables import ScoreEvent
from settings import Settings
from tests.support import (
    ADMIN_TOKEN,
    Api,
    Db,
    Listener,
    Stack,
    answer_of,
    concurrently,
    expect,
    in_parallel,
    insert_job,
    ok_job,
    parse_iso,
    post_all,
    questions,
    register_teams,
    send,
    unique,
)
from workers.jobs import WorkerContext, run_job

Listen = Callable[..., Listener]


def assert_envelopes(listener: Listener, slug: str) -> None:
    """Every payload names the competition, has an ISO 8601 ``at``, and ``seq`` only goes up."""
    seqs = []
    for name, data in listener.events:
        assert isinstance(data, dict), (name, data)
        assert data["competition"] == slug, (name, data)
        assert isinstance(data["seq"], int) and not isinstance(data["seq"], bool), (name, data)
        parse_iso(data["at"])
        seqs.append(data["seq"])
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), [(n, d["seq"]) for n, d in listener.events]


def _has_change(team: str, reason: str) -> Callable[[dict[str, Any]], bool]:
    return lambda data: any(c["teamName"] == team and c["reason"] == reason for c in data["changes"])


def test_events_after_an_answer(api: Api, db: Db, listen: Listen, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(2))
    alpha = api.register(slug, "Alpha")
    bravo = api.register(slug, "Bravo")

    spectator = listen(slug)
    team = listen(slug, token=alpha.token)
    other = listen(slug, token=bravo.token)
    organiser = listen(slug, token=ADMIN_TOKEN)
    standings = [{"rank": 1, "teamName": "Alpha", "points": 1000}, {"rank": 2, "teamName": "Bravo", "points": 1000}]
    for client in (spectator, team, other, organiser):
        name, snapshot = client.wait_for(lambda events: events[0] if events else None, message="a snapshot")
        assert name == "leaderboard_update"
        assert snapshot["leaderboard"] == standings
        assert snapshot["changes"] == []

    claim = api.claim(slug, alpha.token, "Q1")
    ok_job(claim)
    submit = api.submit(slug, alpha.token, "Q1", answer_of("Q1"))
    assert ok_job(submit)["totalPoints"] == 1100

    change = {"teamName": "Alpha", "points": 1100, "delta": 100, "reason": "correct_answer", "rank": 1}
    update = spectator.wait_event("leaderboard_update", _has_change("Alpha", "correct_answer"))
    assert change in update["changes"]
    assert update["leaderboard"] == [{"rank": 1, "teamName": "Alpha", "points": 1100},
                                     {"rank": 2, "teamName": "Bravo", "points": 1000}]
    assert update["leaderboard"] == api.leaderboard(slug) == db.standings(db.competition(slug).id, 10)
    claimed_event = spectator.wait_event("question_claimed")
    assert (claimed_event["questionId"], claimed_event["teamName"]) == ("Q1", "Alpha")

    assert team.wait_event("score_update", lambda d: d["reason"] == "correct_answer").items() >= change.items()
    submitted = team.wait_event("job_update", lambda d: d["jobId"] == submit["jobId"])
    assert (submitted["kind"], submitted["status"]) == ("submit", "succeeded")
    assert submitted["result"] == submit["result"]
    claimed = team.wait_event("job_update", lambda d: d["jobId"] == claim["jobId"])
    assert (claimed["kind"], claimed["status"]) == ("claim", "succeeded")
    team.wait_event("leaderboard_update", _has_change("Alpha", "correct_answer"))
    assert organiser.wait_event("score_update", lambda d: d["reason"] == "correct_answer").items() >= change.items()
    organiser.wait_event("leaderboard_update", _has_change("Alpha", "correct_answer"))
    other.wait_event("leaderboard_update", _has_change("Alpha", "correct_answer"))

    # Private events stay private.
    assert spectator.of("score_update") == [] and spectator.of("job_update") == []
    assert other.of("score_update") == [] and other.of("job_update") == []

    api.set_state(slug, "paused")
    for client in (spectator, team, organiser):
        assert client.wait_event("competition_state")["state"] == "paused"
    for client in (spectator, team, other, organiser):
        assert_envelopes(client, slug)


def test_each_change_is_announced_with_the_points_it_made(api: Api, db: Db, listen: Listen, settings: Settings,
                                                         sender: Producer) -> None:
    """Two answers of one team applied together (a worker takes a queue's waiting jobs as one
    batch) are announced as 1000 -> 1100 -> 1200, not with the team's points after both."""
    slug = api.create_competition(maxOpenClaims=2)["slug"]
    competition_id = db.competition(slug).id
    bank = questions(40)
    queue = board_queue(settings, competition_id, "Q1")
    codes = [q["questionId"] for q in bank if board_queue(settings, competition_id, q["questionId"]) == queue][:2]
    api.add_questions(slug, [q for q in bank if q["questionId"] in codes])
    team = api.register(slug, "Batcher")
    for code in codes:
        ok_job(api.claim(slug, team.token, code))
    own = listen(slug, token=team.token)
    spectator = listen(slug)
    for client in (own, spectator):
        client.wait_event("leaderboard_update")

    job_ids = [insert_job(db, competition_id=competition_id, kind="submit", queue=queue, token=team.token,
                          payload={"questionId": code, "answer": answer_of(code)}, team_id=team.id)
               for code in codes]
    for job_id in job_ids:
        send(sender, job_id, "submit", queue)
    rows = db.wait_jobs(job_ids)
    assert [rows[j].result["totalPoints"] for j in job_ids] == [1100, 1200]  # type: ignore[index]

    def scores(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        return [d for n, d in events if n == "score_update" and d["reason"] == "correct_answer"]

    updates = own.wait_for(lambda events: len(scores(events)) >= 2 and scores(events), message="2 score updates")
    assert [(u["points"], u["delta"]) for u in updates] == [(1100, 100), (1200, 100)]
    own.wait_for(lambda _: all(j in {d["jobId"] for d in own.of("job_update")} for j in job_ids),
                 message="both job updates")
    jobs = {d["jobId"]: d for d in own.of("job_update")}
    assert [jobs[j]["result"]["totalPoints"] for j in job_ids] == [1100, 1200]

    def changes(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        return [c for n, d in events if n == "leaderboard_update" for c in d["changes"]
                if c["reason"] == "correct_answer"]

    public = spectator.wait_for(lambda events: len(changes(events)) >= 2 and changes(events),
                                message="2 public changes")
    assert [(c["points"], c["delta"]) for c in public] == [(1100, 100), (1200, 100)]


def test_an_event_numbered_first_is_not_delivered_last(api: Api, db: Db, listen: Listen, settings: Settings,
                                                       worker_context: WorkerContext,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Events reach a client by two paths: a worker's through Redis, and the broadcasts its
    realtime server makes itself. Here another team's claim is broadcast while a worker is
    between updating the leaderboard cache and publishing its events; the client must still
    see ``seq`` only go up, or, dropping "stale" events as the protocol invites, it would lose
    its own score and job."""
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    api.add_questions(slug, questions(2))
    alpha = api.register(slug, "Alpha")
    bravo = api.register(slug, "Bravo")
    ok_job(api.claim(slug, alpha.token, "Q1"))
    own = listen(slug, token=alpha.token)
    own.wait_event("leaderboard_update")
    job_id = insert_job(db, competition_id=competition_id, kind="submit",
                        queue=board_queue(settings, competition_id, "Q1"), token=alpha.token,
                        payload={"questionId": "Q1", "answer": answer_of("Q1")}, team_id=alpha.id)

    def meanwhile() -> None:
        ok_job(api.claim(slug, bravo.token, "Q2"))
        own.wait_event("question_claimed", lambda d: d["questionId"] == "Q2")

    # Run ``meanwhile`` right after the publisher's first Redis round trip (the leaderboard
    # cache), before it publishes anything.
    redis_client = worker_context.live.redis
    make_pipeline = redis_client.pipeline
    fired: list[bool] = []

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        execute = pipe.execute

        def hooked(*a: Any, **k: Any) -> Any:
            result = execute(*a, **k)
            if not fired:
                fired.append(True)
                meanwhile()
            return result

        pipe.execute = hooked
        return pipe

    monkeypatch.setattr(redis_client, "pipeline", pipeline)
    assert run_job(worker_context, uuid.UUID(job_id)) == "succeeded"
    assert fired
    own.wait_event("job_update", lambda d: d["jobId"] == job_id)
    own.wait_event("score_update")
    assert_envelopes(own, slug)


def test_connections_that_are_refused(api: Api, listen: Listen, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    team = api.register(slug)
    elsewhere = api.create_competition()["slug"]
    stranger = api.register(elsewhere)

    refused: list[dict[str, Any]] = [
        {"competition": slug, "token": "not-a-token"},
        {"competition": slug, "token": stranger.token},
        {"competition": slug, "token": 42},
        {"competition": slug, "token": ""},
        {"competition": unique("no-such-competition")},
        {"competition": ""},
        {"token": team.token},
    ]
    for auth in refused:
        with pytest.raises(socketio.exceptions.ConnectionError):
            listen(**auth)

    # The same server still takes good connections.
    spectator = listen(slug)
    assert spectator.wait_event("leaderboard_update")["leaderboard"][0]["teamName"] == team.name
    own = listen(slug, token=team.token)
    assert own.wait_event("leaderboard_update")["changes"] == []


def test_a_burst_reaches_spectators_coalesced(api: Api, db: Db, listen: Listen) -> None:
    slug = api.create_competition(leaderboardSize=20, maxOpenClaims=10)["slug"]
    competition_id = db.competition(slug).id
    team_count, per_team = 50, 10
    teams = register_teams(api, db, slug, [f"Burst {i:02d}" for i in range(team_count)])
    bank = []
    for i in range(team_count):
        # Five groups of ten teams end on equal scores, so ties decide most of the ranking.
        bank += questions(per_team, prefix=f"T{i}-", points=10 * (i % 5 + 1))
    api.add_questions(slug, bank)
    total = team_count * per_team
    codes = {t.id: [f"T{i}-{j}" for j in range(1, per_team + 1)] for i, t in enumerate(teams)}
    base = f"/api/v1/competitions/{slug}"
    claims = post_all(api, "POST", [(f"{base}/claims", t.token, {"questionId": c}) for t in teams for c in codes[t.id]],
                      threads=50)
    assert {j.status for j in db.wait_jobs([c["jobId"] for c in claims]).values()} == {"succeeded"}

    spectator = listen(slug)
    spectator.wait_event("leaderboard_update")
    # Round after round: every team answers its next question, in upper case to be sure.
    answers = [(f"{base}/submissions", t.token, {"questionId": c, "answer": answer_of(c).upper()})
               for j in range(per_team) for t in teams for c in [codes[t.id][j]]]
    responses = in_parallel([lambda a=a: api.request("POST", a[0], token=a[1], json=a[2]) for a in answers], api, 50)
    # A refused valid answer is a bug, reported at the end; it is retried so the rest can be checked.
    refused = [f"{r.status_code} {r.text[:200]}" for r in responses if r.status_code != 202]
    for i, resp in enumerate(responses):
        for _ in range(10):
            if resp.status_code == 202:
                break
            resp = responses[i] = api.request("POST", answers[i][0], token=answers[i][1], json=answers[i][2])
        expect(resp, 202)
    submitted = [r.json() for r in responses]
    rows = db.wait_jobs([s["jobId"] for s in submitted])
    outcomes = Counter((j.status, (j.error or {}).get("code")) for j in rows.values())
    applied = outcomes[("succeeded", None)]

    def burst(data: dict[str, Any]) -> list[dict[str, Any]]:
        return [c for c in data.get("changes", []) if c["reason"] == "correct_answer"]

    spectator.wait_for(lambda events: sum(len(burst(d)) for n, d in events if n == "leaderboard_update") >= applied,
                       timeout=60, message=f"{applied} score changes")
    updates = [d for n, d in spectator.events if n == "leaderboard_update" and burst(d)]
    changes = [c for d in updates for c in burst(d)]
    assert len(changes) == applied
    # At most one broadcast per interval (0.25 s), plus the first of the burst, timed where they
    # were sent: ``seq`` is the realtime process's clock in microseconds when it numbered each one
    # (arrival times at this client bunch up when its own loop is busy, as on a loaded machine).
    span = (updates[-1]["seq"] - updates[0]["seq"]) / 1e6
    assert 2 <= len(updates) <= span / 0.25 + 2, f"{len(updates)} broadcasts in {span:.1f} s"

    ledger = db.all(select(ScoreEvent.team_id, ScoreEvent.delta, ScoreEvent.points_after)
                    .where(ScoreEvent.competition_id == competition_id, ScoreEvent.reason == "correct_answer"))
    names = {t.id: t.name for t in teams}
    announced = Counter((c["teamName"], c["delta"], c["points"]) for c in changes)
    recorded = Counter((names[e.team_id], e.delta, e.points_after) for e in ledger)
    wrong, missing = sorted((announced - recorded).elements()), sorted((recorded - announced).elements())
    assert not wrong and not missing, (f"changes (teamName, delta, points) announced but not in the ledger: "
                                       f"{wrong[:5]}; in the ledger but not announced: {missing[:5]}")
    final = {t.name: t.points for t in db.teams(competition_id)}
    last_seen: dict[str, int] = {}
    for change in changes:
        assert change["points"] > last_seen.get(change["teamName"], 1000)
        last_seen[change["teamName"]] = change["points"]
    assert last_seen == {name: points for name, points in final.items() if name in last_seen}

    expected = db.standings(competition_id, 20)
    assert updates[-1]["leaderboard"] == expected
    assert api.leaderboard(slug) == expected
    assert_envelopes(spectator, slug)
    db.assert_ledger(competition_id)

    # Every answer was valid: all accepted, all applied.
    assert outcomes == Counter({("succeeded", None): total}), outcomes
    assert not refused, f"{len(refused)} of {total} valid answers were refused, e.g. {refused[:3]}"
    assert final == {t.name: 1000 + per_team * 10 * (i % 5 + 1) for i, t in enumerate(teams)}
    assert [row["points"] for row in expected] == [1500] * 10 + [1400] * 10
    assert len(updates) <= 40, f"{len(updates)} broadcasts for {total} changes"


def test_spectators_arriving_together_on_an_empty_cache_get_the_standings(
        api: Api, db: Db, settings: Settings, stack: Stack) -> None:
    """After a Redis restart the leaderboard cache is empty; the first connections rebuild it
    from PostgreSQL. Ten spectators (a room of screens reconnecting) arrive at once, three times.
    A realtime server of its own, since a failure here can leave the server unable to serve."""
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    for name in ("Ada", "Brian", "Cleo"):
        api.register(slug, name)
    expected = db.standings(competition_id, 10)
    live = Live(settings)
    spectators: list[Listener] = []
    try:
        with stack.extra_realtime("realtime-reconnects") as url:
            for _ in range(3):
                live.clear(competition_id)
                batch = [Listener(url, {"competition": slug}) for _ in range(10)]
                spectators += batch
                concurrently([s.connect for s in batch])
                assert [s.wait_event("leaderboard_update")["leaderboard"] for s in batch] == [expected] * 10
    finally:
        for spectator in spectators:
            spectator.close()
        live.redis.close()
