"""After-commit side effects of jobs: the leaderboard cache, Socket.IO events, waiters.

Runs only after the worker's transaction has committed, so nothing announced here can be
rolled back. A whole batch of jobs is announced in one Redis pipeline, whatever its size: the
waiters' notices, the leaderboard cache, every event and the batch's metrics (two round trips
when a newcomer's rank has to be read from the cache first). A failure here loses no game
state: the sweeper rebuilds the leaderboard cache from PostgreSQL, and
clients can always read their jobs over REST.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import socketio

from models.events import (
    Event,
    JobFinished,
    JobUpdate,
    JobView,
    News,
    ScoreChange,
    ScoreUpdate,
    TimeUpdate,
    encode,
    iso,
    job_fields,
    job_view,
    to_wire,
)
from models.live import Live, organisers_room, team_room
from models.metrics import Tally
from models.ranking import standing
from models.tables import Competition, Job
from settings import Settings
from workers.rules import Outbox
from workers.rules import ScoreChange as TeamChange

log = logging.getLogger(__name__)

# Kept importable from here for callers that have not moved to ``models.events`` yet.
__all__ = ["Announcement", "Publisher", "job_view"]


@dataclass
class Announcement:
    competition: Competition
    job: Job
    outbox: Outbox

    @functools.cached_property
    def job_fields(self) -> dict[str, Any]:
        """The finished job's contract fields, built once for the waiter's notice and ``job_update``."""
        return job_fields(self.job)


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


@dataclass
class Outgoing:
    """What one job announces: events for private rooms now, public news for the coalescers."""

    private: list[tuple[Event, str]] = field(default_factory=list)
    news: News | None = None


def _outgoing(a: Announcement, at: datetime) -> Outgoing:
    slug = a.competition.slug
    stamp = iso(at)
    # Carried by the job's private events, so one grep follows a write from HTTP to Socket.IO.
    request_id = a.job.request_id
    out = Outgoing()
    changes = [
        ScoreChange(team_name=c.name, points=c.points, delta=c.delta, reason=c.reason, rank=c.rank)
        for c in a.outbox.scores
    ]
    public = [view for view, c in zip(changes, a.outbox.scores, strict=True)
              if not c.team.disqualified or "disqualified" in c.reason]
    if public or a.outbox.claimed or a.outbox.released:
        # Public news goes to the realtime servers, which merge it into a few broadcasts a second,
        # claims and releases in the order they happened.
        out.news = News(competition=slug, competition_id=a.competition.id, at=stamp, changes=public,
                        claims=list(a.outbox.claimed), releases=list(a.outbox.released))
    for view, change in zip(changes, a.outbox.scores, strict=True):
        score = ScoreUpdate(competition=slug, at=stamp, team_name=view.team_name, points=view.points,
                            delta=view.delta, reason=view.reason, rank=view.rank, request_id=request_id)
        out.private.append((score, team_room(change.team.token_hash)))
        out.private.append((score, organisers_room(slug)))
    for team in a.outbox.deadlines:
        remaining = max(0, int((team.deadline - at).total_seconds())) if team.deadline else None
        deadline = iso(team.deadline) if team.deadline else None
        out.private.append((TimeUpdate(competition=slug, at=stamp, deadline=deadline, remaining_seconds=remaining,
                                       request_id=request_id), team_room(team.token_hash)))
    out.private.append((JobUpdate(competition=slug, at=stamp, request_id=request_id, **a.job_fields),
                        team_room(a.job.owner_hash)))
    return out


class Publisher:
    def __init__(self, settings: Settings, live: Live) -> None:
        self.settings = settings
        self.live = live
        self.sio = BufferedRedisManager(settings.redis_url, channel=live.socketio_channel)

    def announce_all(self, announcements: list[Announcement], at: datetime, tally: Tally | None = None,
                     absorb: tuple[str, list[str]] | None = None) -> list[str]:
        """Announce a committed batch in one Redis round trip, or two when a newcomer's rank must be read.

        ``absorb`` (a queue and the ids of the batch's other jobs) takes those jobs' messages off
        the queue on the last round trip (``Live.queue_absorb``); returns the ids it removed.

        The order within the pipeline is the order of the old round trips: waiting requests first
        (their answer is in PostgreSQL already; Redis runs their publishes before anything else),
        then the leaderboard cache, so any event numbered after a change describes a leaderboard
        that already includes it, then the events. Only a rank read from the cache (a newcomer's)
        has to come back before the events can be built; ``tally``, the batch's metrics, rides on
        the last round trip, after the events.
        """
        pipe = self.live.redis.pipeline(transaction=False)
        for a in announcements:
            pipe.publish(self.live.jobs_channel, encode(JobFinished(job_id=str(a.job.id), status=a.job.status,
                                                                    job=JobView(**a.job_fields))))
            if a.job.kind == "submit" and a.job.result is not None and a.job.result.get("correct") is False:
                self.live.count_wrong_answer(a.job.team_id, pipe)
        unranked: list[tuple[Announcement, TeamChange]] = []
        try:
            for a in announcements:
                if a.outbox.scores:
                    self.live.update(a.competition.id, [standing(c.team) for c in a.outbox.scores], pipe)
            unranked = [(a, c) for a in announcements for c in a.outbox.scores
                        if c.rank is None and not c.team.disqualified]
            for a, change in unranked:
                self.live.queue_rank(a.competition.id, change.team.id, pipe)
            if unranked:
                results = self.live.execute(pipe)
                for (_, change), rank in zip(unranked, results[len(results) - len(unranked):], strict=True):
                    change.rank = None if rank is None else int(rank) + 1
                pipe = self.live.redis.pipeline(transaction=False)
            self._queue_events(pipe, announcements, at)
        except Exception:
            # Committed state is safe; the sweeper repairs the leaderboard cache.
            log.exception("announcing %d job(s) failed", len(announcements))
            if unranked:
                pipe = self.live.redis.pipeline(transaction=False)
        if tally is not None:
            tally.queue(pipe, self.settings.redis_prefix)
        if absorb is not None:
            self.live.queue_absorb(*absorb, pipe)
        try:
            results = self.live.execute(pipe, raise_on_error=False)
        except Exception:
            # Redis away: nothing was taken off the queue, those messages come and ack one by one.
            log.exception("announcing %d job(s) failed", len(announcements))
            return []
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            log.error("announcing %d job(s) failed", len(announcements), exc_info=failed[0])
        if absorb is None or isinstance(results[-1], Exception):
            return []
        return [r.decode() if isinstance(r, bytes) else str(r) for r in results[-1]]

    def _queue_events(self, pipe: Any, announcements: list[Announcement], at: datetime) -> None:
        # Built in full before the first is queued, so a failure publishes none of a batch's events.
        # The realtime servers number (``seq``) what they deliver, so each client sees the numbers in
        # the order it receives the events.
        outgoing = [_outgoing(a, at) for a in announcements]
        self.sio.buffer = []
        try:
            for out in outgoing:
                for event, room in out.private:
                    name, data = to_wire(event)
                    self.sio.emit(name, data, room=room, namespace="/")
            messages = self.sio.buffer
        finally:
            self.sio.buffer = None
        for message in messages:
            pipe.publish(self.sio.channel, message)
        for out in outgoing:
            if out.news is not None:
                pipe.publish(self.live.changes_channel, encode(out.news))
