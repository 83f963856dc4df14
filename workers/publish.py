"""After-commit side effects of a job: the leaderboard cache, Socket.IO events, waiters.

Runs only after the worker's transaction has committed, so nothing announced here can be
rolled back. A failure here loses no game state: the sweeper rebuilds the leaderboard cache
from PostgreSQL, and clients can always read the job over REST.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import socketio

from models.live import Live, competition_room, iso, organisers_room, team_room
from models.ranking import standing
from models.tables import Competition, Job
from settings import Settings
from workers.rules import Outbox

log = logging.getLogger(__name__)


def job_view(job: Job) -> dict[str, Any]:
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


class Publisher:
    def __init__(self, settings: Settings, live: Live) -> None:
        self.settings = settings
        self.live = live
        self.sio = socketio.RedisManager(settings.redis_url, channel=live.socketio_channel, write_only=True)

    def emit(self, event: str, data: dict[str, Any], room: str | list[str]) -> None:
        self.sio.emit(event, data, room=room, namespace="/")

    def announce(self, competition: Competition, job: Job, outbox: Outbox, at: datetime) -> None:
        slug = competition.slug
        # The cache is updated before the sequence number is taken, so a snapshot that reads
        # seq and then the leaderboard never claims a seq whose change it does not show.
        if outbox.scores:
            self.live.update(competition.id, [standing(c.team) for c in outbox.scores])
        events: list[tuple[str, dict[str, Any], Any]] = []
        if outbox.scores:
            public = [
                {
                    "teamName": c.team.name,
                    "points": c.team.points,
                    "delta": c.delta,
                    "reason": c.reason,
                    "rank": c.rank,
                }
                for c in outbox.scores
                if not c.team.disqualified or "disqualified" in c.reason
            ]
            if public:
                events.append(("", {"competitionId": competition.id, "changes": public}, ""))
            for change in outbox.scores:
                score = {
                    "teamName": change.team.name,
                    "points": change.team.points,
                    "delta": change.delta,
                    "reason": change.reason,
                    "rank": change.rank,
                }
                events.append(("score_update", score, team_room(change.team.token_hash)))
                events.append(("score_update", score, organisers_room(slug)))
        for code, team_name in outbox.claimed:
            events.append(("question_claimed", {"questionId": code, "teamName": team_name},
                           [competition_room(slug), organisers_room(slug)]))
        for team in outbox.deadlines:
            remaining = max(0, int((team.deadline - at).total_seconds())) if team.deadline else None
            events.append((
                "time_update",
                {"deadline": iso(team.deadline) if team.deadline else None, "remainingSeconds": remaining},
                team_room(team.token_hash),
            ))
        events.append(("job_update", job_view(job), team_room(job.owner_hash)))

        seq = self.live.next_seq(competition.id, len(events))
        stamp = iso(at)
        for offset, (event, data, room) in enumerate(events):
            payload = {"competition": slug, "seq": seq + offset, "at": stamp, **data}
            if event:
                self.emit(event, payload, room)
            else:
                # Public score changes go to the realtime servers' coalescers, not to clients.
                self.live.publish_changes(payload)

    def count_wrong(self, job: Job) -> None:
        if job.kind == "submit" and job.result is not None and job.result.get("correct") is False:
            self.live.count_wrong_answer(job.team_id)

    def job_finished(self, job: Job) -> None:
        self.live.publish_job_done(str(job.id), job.status)
