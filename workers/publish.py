"""After-commit side effects of jobs: the leaderboard cache, Socket.IO events, waiters.

Runs only after the worker's transaction has committed, so nothing announced here can be
rolled back. A whole batch of jobs is announced in two Redis round trips, whatever its size:
the leaderboard cache, then one pipeline of every publish. A failure
here loses no game state: the sweeper rebuilds the leaderboard cache from PostgreSQL, and
clients can always read their jobs over REST.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import socketio
from sqlalchemy import Row

from models.live import Live, competition_room, iso, organisers_room, team_room
from models.ranking import standing
from models.tables import Competition, Job
from settings import Settings
from workers.rules import Outbox

log = logging.getLogger(__name__)


def job_view(job: Job | Row[Any]) -> dict[str, Any]:
    """The job as clients see it (REST and ``job_update``)."""
    view: dict[str, Any] = {
        "jobId": str(job.id),
        "kind": job.kind,
        "status": job.status,
        "createdAt": iso(job.created_at) if job.created_at else None,
        "finishedAt": iso(job.finished_at) if job.finished_at else None,
        "links": {"job": f"/api/v1/jobs/{job.id}"},
    }
    if job.result is not None:
        view["result"] = job.result
    if job.error is not None:
        view["error"] = job.error
    return view


@dataclass
class Announcement:
    competition: Competition
    job: Job
    outbox: Outbox


class BufferedRedisManager(socketio.RedisManager):
    """A write-only Socket.IO manager whose publishes are collected and sent in one pipeline."""

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(url, channel=channel, write_only=True)
        self.buffer: list[str] | None = None

    def _publish(self, data: dict[str, Any]) -> None:
        if self.buffer is not None:
            self.buffer.append(json.dumps(data))
        else:
            super()._publish(data)


# Event name "" marks public news (score changes, claims) for the realtime coalescers, which
# merge it into a few broadcasts per second, rather than an event sent to clients directly.
Event = tuple[str, dict[str, Any], Any]


def _events(a: Announcement, at: datetime) -> list[Event]:
    slug = a.competition.slug
    events: list[Event] = []
    if a.outbox.scores:
        public = [
            {"teamName": c.name, "points": c.points, "delta": c.delta, "reason": c.reason, "rank": c.rank}
            for c in a.outbox.scores
            if not c.team.disqualified or "disqualified" in c.reason
        ]
        if public:
            events.append(("", {"competitionId": a.competition.id, "changes": public}, None))
        for change in a.outbox.scores:
            score = {
                "teamName": change.name,
                "points": change.points,
                "delta": change.delta,
                "reason": change.reason,
                "rank": change.rank,
            }
            events.append(("score_update", score, team_room(change.team.token_hash)))
            events.append(("score_update", score, organisers_room(slug)))
    if a.outbox.claimed:
        # Claims are public broadcasts too, so they are coalesced by the realtime servers.
        claims = [{"questionId": code, "teamName": team_name} for code, team_name in a.outbox.claimed]
        events.append(("", {"competitionId": a.competition.id, "changes": [], "claims": claims}, None))
    for code, reason in a.outbox.released:
        # Rare (a timeout, a disqualification, an organiser), so sent at once, not coalesced.
        events.append(("question_released", {"questionId": code, "reason": reason},
                       [competition_room(slug), organisers_room(slug)]))
    for team in a.outbox.deadlines:
        remaining = max(0, int((team.deadline - at).total_seconds())) if team.deadline else None
        events.append((
            "time_update",
            {"deadline": iso(team.deadline) if team.deadline else None, "remainingSeconds": remaining},
            team_room(team.token_hash),
        ))
    events.append(("job_update", job_view(a.job), team_room(a.job.owner_hash)))
    return events


class Publisher:
    def __init__(self, settings: Settings, live: Live) -> None:
        self.settings = settings
        self.live = live
        self.sio = BufferedRedisManager(settings.redis_url, channel=live.socketio_channel)

    def announce_all(self, announcements: list[Announcement], at: datetime) -> None:
        try:
            self._announce(announcements, at)
        except Exception:
            # Committed state is safe; the sweeper repairs the leaderboard cache.
            log.exception("announcing %d job(s) failed", len(announcements))
        try:
            pipe = self.live.redis.pipeline(transaction=False)
            for a in announcements:
                pipe.publish(self.live.jobs_channel, f"{a.job.id} {a.job.status}")
                if a.job.kind == "submit" and a.job.result is not None and a.job.result.get("correct") is False:
                    self.live.count_wrong_answer(a.job.team_id, pipe)
            pipe.execute()
        except Exception:
            log.exception("notifying waiters failed")

    def _announce(self, announcements: list[Announcement], at: datetime) -> None:
        # 1. The cache first, so any event numbered after a change describes a leaderboard that
        #    already includes it; newcomers' ranks are read from it in the same round trip.
        pipe = self.live.redis.pipeline(transaction=False)
        for a in announcements:
            if a.outbox.scores:
                self.live.update(a.competition.id, [standing(c.team) for c in a.outbox.scores], pipe)
        unranked = [(a, c) for a in announcements for c in a.outbox.scores
                    if c.rank is None and not c.team.disqualified]
        for a, change in unranked:
            self.live.queue_rank(a.competition.id, change.team.id, pipe)
        results = pipe.execute()
        for (_, change), rank in zip(unranked, results[len(results) - len(unranked):], strict=True):
            change.rank = None if rank is None else int(rank) + 1

        per_job = [(a, _events(a, at)) for a in announcements]

        # 2. Publish everything in one pipeline. The realtime servers number (``seq``) what they
        #    deliver, so each client sees the numbers in the order it receives the events.
        stamp = iso(at)
        self.sio.buffer = []
        changes: list[str] = []
        try:
            for a, events in per_job:
                for event, data, room in events:
                    payload = {"competition": a.competition.slug, "at": stamp, **data}
                    if event:
                        self.sio.emit(event, payload, room=room, namespace="/")
                    else:
                        changes.append(json.dumps(payload))
            pipe = self.live.redis.pipeline(transaction=False)
            for message in self.sio.buffer:
                pipe.publish(self.sio.channel, message)
            for message in changes:
                pipe.publish(self.live.changes_channel, message)
            pipe.execute()
        finally:
            self.sio.buffer = None
