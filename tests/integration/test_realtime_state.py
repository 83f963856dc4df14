"""What a realtime server holds cannot go stale or grow without bound, and it reports on itself:
freezes it was not told of, a Redis that lost the leaderboard, tokens of failed registrations,
client-chosen names, ``oldestAt`` and ``/metrics``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests
import socketio
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import sessionmaker

from models import events
from models.kinds import REGISTRATIONS
from models.live import Live, iso, utcnow
from models.ranking import all_standings
from models.tables import Competition, Job
from realtime.app import Directory, pending_registration, team_of_token
from settings import Settings
from tests.integration.organiser_support import (
    claimed_codes,
    events_named,
    mark,
    standings_of,
    wait_event_after,
)
from tests.support import (
    ADMIN_TOKEN,
    Api,
    Db,
    Listener,
    TeamHandle,
    answer_of,
    insert_job,
    ok_job,
    questions,
    token_digest,
    unique,
    wait_until,
)

Listen = Callable[..., Listener]


def answer_right(api: Api, slug: str, team: TeamHandle, code: str) -> None:
    ok_job(api.claim(slug, team.token, code))
    assert ok_job(api.submit(slug, team.token, code, answer_of(code)))["correct"] is True


def set_freeze_behind_realtimes_back(db: Db, slug: str, frozen: bool) -> None:
    """Write the freeze to PostgreSQL only, as if its message to the realtime servers was lost."""
    with db.sessions.begin() as session:
        session.execute(update(Competition).where(Competition.slug == slug)
                        .values(freeze_at=func.now() if frozen else None))


def test_a_freeze_realtime_was_not_told_of_still_hides_live_scores(api: Api, db: Db, listen: Listen) -> None:
    slug = api.create_competition()["slug"]
    api.add_questions(slug, questions(4, points=lambda i: 100 * i))
    alpha, bravo = api.register(slug, "Alpha"), api.register(slug, "Bravo")
    spectator = listen(slug)
    organiser = listen(slug, token=ADMIN_TOKEN)
    answer_right(api, slug, alpha, "Q1")
    spectator.wait_event("leaderboard_update", lambda e: standings_of(e)[:1] == [("Alpha", 1100)])

    set_freeze_behind_realtimes_back(db, slug, frozen=True)
    at_freeze = [("Alpha", 1100), ("Bravo", 1000)]
    seen, seen_by_organiser = mark(spectator), mark(organiser)
    answer_right(api, slug, bravo, "Q4")
    live = [("Bravo", 1400), ("Alpha", 1100)]
    # The broadcast happened (organisers see it) ...
    wait_event_after(organiser, "leaderboard_update", seen_by_organiser, lambda e: standings_of(e) == live)
    # ... and after a later public event, spectators have still not been shown the new standings.
    ok_job(api.claim(slug, alpha.token, "Q2"))
    wait_event_after(spectator, "question_claimed", seen, lambda e: "Q2" in claimed_codes(e))
    assert events_named(spectator, "leaderboard_update", seen) == []
    assert standings_of(listen(slug).wait_event("leaderboard_update")) == at_freeze
    assert standings_of(listen(slug, token=ADMIN_TOKEN).wait_event("leaderboard_update")) == live


def test_a_freeze_lifted_without_a_message_is_still_revealed(api: Api, db: Db, listen: Listen) -> None:
    slug = api.create_competition()["slug"]
    api.add_questions(slug, questions(2, points=lambda i: 100 * i))
    alpha, bravo = api.register(slug, "Alpha"), api.register(slug, "Bravo")
    answer_right(api, slug, alpha, "Q1")
    api.patch_competition(slug, freeze=True)
    spectator = listen(slug)
    assert standings_of(spectator.wait_event("leaderboard_update")) == [("Alpha", 1100), ("Bravo", 1000)]
    answer_right(api, slug, bravo, "Q2")
    live = [("Bravo", 1200), ("Alpha", 1100)]
    wait_until(lambda: api.admin("GET", f"/api/v1/competitions/{slug}/leaderboard").json()["leaderboard"][0]
               ["points"] == 1200, message="the answer applied")

    seen = mark(spectator)
    set_freeze_behind_realtimes_back(db, slug, frozen=False)
    # No further change happens: the periodic re-read (REALTIME_REFRESH, 1 s) finds the freeze gone.
    reveal = wait_event_after(spectator, "leaderboard_update", seen, timeout=15)
    assert standings_of(reveal) == live
    time.sleep(2.5)  # two more re-reads, which must not reveal again
    assert len(events_named(spectator, "leaderboard_update", seen)) == 1


def test_a_redis_that_lost_everything_gets_a_whole_leaderboard_back(api: Api, db: Db, listen: Listen,
                                                                   settings: Settings) -> None:
    """FLUSHDB mid-competition: the first update after it must not leave a board that looks whole
    with one team on it; the next reader rebuilds every team from PostgreSQL."""
    slug = api.create_competition(maxOpenClaims=2)["slug"]
    competition_id = db.competition(slug).id
    api.add_questions(slug, questions(4, points=lambda i: 100 * i))
    teams = [api.register(slug, name) for name in ("Ada", "Brian", "Cleo", "Dev")]
    answer_right(api, slug, teams[0], "Q1")
    spectator = listen(slug)
    spectator.wait_event("leaderboard_update", lambda e: standings_of(e)[:1] == [("Ada", 1100)])
    client = redis.Redis.from_url(settings.redis_url)
    live = Live(settings)
    try:
        client.flushdb()
        # What a worker's publisher does first after its commit: patch its team into the cache.
        with db.session() as session:
            cleo = next(s for s in all_standings(session, competition_id) if s.name == "Cleo")
        live.update(competition_id, [cleo])
        assert not live.has_board(competition_id)
        pipe = live.redis.pipeline()
        live.queue_rank(competition_id, cleo.team_id, pipe)
        assert live.execute(pipe) == [None]  # no rank from part of a board
        expected = db.standings(competition_id, 10)
        assert len(expected) == 4
        assert listen(slug).wait_event("leaderboard_update")["leaderboard"] == expected
        assert live.has_board(competition_id)

        # Once more, with the whole pipeline: the stack keeps playing after the loss.
        client.flushdb()
        seen = mark(spectator)
        answer_right(api, slug, teams[1], "Q4")
        update_ = wait_event_after(spectator, "leaderboard_update", seen,
                                   lambda e: any(c["teamName"] == "Brian" and c["points"] == 1400
                                                 for c in e["changes"]), timeout=30)
        assert update_["leaderboard"] == db.standings(competition_id, 10)
        assert [row["teamName"] for row in update_["leaderboard"]] == ["Brian", "Ada", "Cleo", "Dev"]
    finally:
        client.close()
        live.redis.close()


def test_the_token_of_a_failed_registration_is_refused(api: Api, db: Db, listen: Listen) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    api.register(slug, "Owls")
    resp = api.post_registration(slug, "Owls", wait=10)
    body = resp.json()
    assert body["status"] == "failed" and body["error"]["code"] == "team_name_taken", body
    with pytest.raises(socketio.exceptions.ConnectionError):
        listen(slug, token=body["teamToken"])

    # While a registration waits its turn, its token already joins the team's room; once it has
    # failed, no longer.
    token = unique("pending-token")
    job_id = insert_job(db, competition_id=competition_id, kind="register", queue=REGISTRATIONS, token=token,
                        payload={"teamName": "Later", "members": [], "email": "later@example.com"}, team_id=None)
    listen(slug, token=token).wait_event("leaderboard_update")
    with db.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            status="failed", error={"code": "team_name_taken", "message": "taken"}, finished_at=func.now()))
    with pytest.raises(socketio.exceptions.ConnectionError):
        listen(slug, token=token)


def test_token_look_ups_at_connect_use_indexes(db: Db, competition: dict[str, Any]) -> None:
    """An unknown bearer token must not scan the jobs table on the realtime event loop."""
    digest = token_digest("unknown")
    competition_id = db.competition(competition["slug"]).id
    with db.engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")  # a plan that can use an index then does
        for statement in (team_of_token(digest), pending_registration(competition_id, digest)):
            compiled = statement.compile(dialect=postgresql.psycopg.dialect(),
                                         compile_kwargs={"render_postcompile": True})
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params))
            assert "Seq Scan" not in plan, plan
        conn.rollback()


def test_names_clients_make_up_are_not_kept(db: Db, monkeypatch: pytest.MonkeyPatch,
                                            competition: dict[str, Any]) -> None:
    monkeypatch.setattr(Directory, "COMPETITIONS", 8)
    directory = Directory(sessionmaker(db.engine))
    assert directory.competition("NOT a slug " * 50) is None
    assert len(directory._competitions) == 0
    for i in range(50):
        assert directory.competition(f"made-up-{i}") is None
    assert len(directory._competitions) == 8
    info = directory.competition(competition["slug"])
    assert info is not None and info.slug == competition["slug"]
    assert len(directory._competitions) == 8


def test_a_coalesced_broadcast_carries_its_oldest_change(api: Api, db: Db, listen: Listen,
                                                        settings: Settings) -> None:
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    team = api.register(slug, "Owls")
    spectator = listen(slug)
    spectator.wait_event("leaderboard_update")
    time.sleep(1.0)  # a quiet spell since the registration's broadcast
    seen = mark(spectator)
    live = Live(settings)
    try:
        # Three jobs' news as workers publish it, back to back: the first goes out at once, the
        # next two are merged into one broadcast.
        stamps = []
        for points in (1000, 1000, 1000):
            stamps.append(iso(utcnow()))
            change = events.ScoreChange(team_name=team.name, points=points, delta=0, reason="registered", rank=1)
            live.publish_change(events.News(competition=slug, competition_id=competition_id, at=stamps[-1],
                                            changes=[change]))
    finally:
        live.redis.close()
    spectator.wait_for(lambda _: sum(len(e["changes"]) for e in events_named(spectator, "leaderboard_update", seen))
                       >= 3, message="three changes")
    first, merged = events_named(spectator, "leaderboard_update", seen)
    assert (first["oldestAt"], first["at"], len(first["changes"])) == (stamps[0], stamps[0], 1)
    assert (merged["oldestAt"], merged["at"], len(merged["changes"])) == (stamps[1], stamps[2], 2)

    # And through the whole stack: every broadcast's oldest change is no newer than its newest.
    api.add_questions(slug, questions(1))
    answer_right(api, slug, team, "Q1")
    update_ = wait_event_after(spectator, "leaderboard_update", seen, lambda e: standings_of(e)[0][1] == 1100)
    assert events.parse_iso(update_["oldestAt"]) <= events.parse_iso(update_["at"])


def _scrape(url: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(url + "/metrics", headers=headers, timeout=10)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_realtime_metrics_scrape(api: Api, listen: Listen, stack: Any) -> None:
    for token in (None, "wrong-token"):
        resp = _scrape(stack.realtime_url, token)
        assert resp.status_code == 401, resp.text
        assert resp.headers["Content-Type"] == "application/problem+json"
    slug = api.create_competition()["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug, "Owls")
    spectator = listen(slug)
    own = listen(slug, token=team.token)
    spectator.wait_event("leaderboard_update")
    before = _samples(_scrape(stack.realtime_url, ADMIN_TOKEN).text)
    seen = mark(spectator)
    answer_right(api, slug, team, "Q1")
    wait_event_after(spectator, "leaderboard_update", seen, lambda e: bool(e["changes"]))
    own.wait_event("score_update")

    resp = _scrape(stack.realtime_url, ADMIN_TOKEN)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    after = _samples(resp.text)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert after[("quiz_realtime_connected_clients", ())] >= 2
    assert grew("quiz_realtime_emits_total", event="leaderboard_update") >= 1
    assert grew("quiz_realtime_emits_total", event="score_update") >= 1
    assert grew("quiz_realtime_broadcast_recipients_total", event="leaderboard_update") >= 2
    assert grew("quiz_realtime_broadcast_seconds_count") >= 1
    assert grew("quiz_realtime_broadcast_write_seconds_count") >= 1
    assert grew("quiz_realtime_commit_to_emit_seconds_count", event="leaderboard_update") >= 1
    assert grew("quiz_realtime_commit_to_emit_seconds_count", event="job_update") >= 1
    assert ("process_cpu_seconds_total", ()) in after


def test_every_message_on_the_redis_channels_is_on_the_contract(api: Api, db: Db, settings: Settings) -> None:
    """Workers, the API and realtime talk through three pub/sub channels; each message there must
    decode with its Struct: ``changes`` (news and settings), ``jobs`` (finished jobs) and
    ``socketio`` (python-socketio's envelope around a contract event)."""
    live = Live(settings)
    pubsub = live.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(live.changes_channel, live.jobs_channel, live.socketio_channel)
    try:
        slug = api.create_competition(maxOpenClaims=2)["slug"]
        api.add_questions(slug, questions(2))
        team = api.register(slug, "Owls")
        answer_right(api, slug, team, "Q1")
        ok_job(api.claim(slug, team.token, "Q2"))
        api.set_state(slug, "paused")
        api.patch_competition(slug, freeze=True)

        received: dict[str, list[bytes]] = {live.changes_channel: [], live.jobs_channel: [],
                                            live.socketio_channel: []}

        def collect() -> bool:
            while (message := pubsub.get_message(timeout=0.1)) is not None:
                received[message["channel"].decode()].append(message["data"])
            return len(received[live.jobs_channel]) >= 4 and len(received[live.changes_channel]) >= 5

        wait_until(collect, timeout=15, message="the game's messages")
    finally:
        pubsub.close()
        live.redis.close()

    # Every message is decoded, though only this test's competition is looked at more closely.
    changes = [events.decode_change(raw) for raw in received[live.changes_channel]]
    assert {type(m) for m in changes if m.competition == slug} == {events.News, events.CompetitionSettings}
    finished = [events.decode_job_finished(raw) for raw in received[live.jobs_channel]]
    assert {f.status for f in finished} == {"succeeded"}
    emitted = set()
    for raw in received[live.socketio_channel]:
        envelope = json.loads(raw)
        if envelope.get("method") != "emit":
            continue
        event = events.from_wire(envelope["event"], envelope["data"][0])
        if event.competition == slug:
            emitted.add(envelope["event"])
    assert emitted >= {"score_update", "job_update", "competition_state"}


def test_claims_and_releases_reach_spectators_in_the_order_they_happened(api: Api, db: Db, listen: Listen,
                                                                       settings: Settings) -> None:
    """A claim, its expiry and the next team's claim, published back to back as workers do: the
    first goes out at once, the other two are merged into the next broadcast, which must still
    show the release before the new claim."""
    slug = api.create_competition()["slug"]
    competition_id = db.competition(slug).id
    spectator = listen(slug)
    spectator.wait_event("leaderboard_update")
    seen = mark(spectator)
    live = Live(settings)
    news = [
        {"claims": [events.Claim(question_id="Q1", team_name="Owls")]},
        {"releases": [events.Release(question_id="Q1", reason="expired")]},
        {"claims": [events.Claim(question_id="Q1", team_name="Bats")]},
    ]
    try:
        for fields in news:
            live.publish_change(events.News(competition=slug, competition_id=competition_id, at=iso(utcnow()),
                                            **fields))
    finally:
        live.redis.close()

    def board(events_: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        return [(n, d) for n, d in events_[seen:] if n in ("question_claimed", "question_released")]

    received = spectator.wait_for(lambda e: len(board(e)) >= 3 and board(e), message="claims and releases")
    assert [(n, d["questionId"], d.get("teamName") or d["reason"]) for n, d in received] == [
        ("question_claimed", "Q1", "Owls"), ("question_released", "Q1", "expired"), ("question_claimed", "Q1", "Bats")]
    assert received[1][1]["releases"] == [{"questionId": "Q1", "reason": "expired"}]
    assert [d["seq"] for _, d in received] == sorted(d["seq"] for _, d in received)


def test_news_nobody_here_watches_costs_no_broadcast_and_a_later_spectator_sees_it(
        api: Api, listen: Listen, stack: Any) -> None:
    slug = api.create_competition()["slug"]
    api.add_questions(slug, questions(2))
    team = api.register(slug, "Quiet")
    count = "quiz_realtime_broadcast_seconds_count"
    before = _samples(_scrape(stack.realtime_url, ADMIN_TOKEN).text)
    answer_right(api, slug, team, "Q1")
    time.sleep(1.0)  # several broadcast intervals: the news has been taken and dropped by now
    after = _samples(_scrape(stack.realtime_url, ADMIN_TOKEN).text)
    assert after.get((count, ()), 0.0) == before.get((count, ()), 0.0)

    spectator = listen(slug)
    first = spectator.wait_event("leaderboard_update")
    assert standings_of(first)[0] == ("Quiet", 1100)
    seen = mark(spectator)
    answer_right(api, slug, team, "Q2")
    wait_event_after(spectator, "leaderboard_update", seen, lambda e: standings_of(e)[0][1] == 1200)
    assert _samples(_scrape(stack.realtime_url, ADMIN_TOKEN).text)[(count, ())] > after.get((count, ()), 0.0)
