"""The sweeper: ``python -m workers.sweeper``.

A job is a row before it is a message, so a message lost between the API's commit and the
broker (or dropped by a broker restart) is found here and sent again; redelivery is
harmless because every task is idempotent. It also rebuilds the Redis leaderboard cache of
live competitions from PostgreSQL, which repairs a Redis restart or a lost announcement.

It enforces the claim timeout: for every unanswered claim and open mystery box older than its
competition's ``claimTimeoutSeconds`` it records a release job on the question's board queue (or
the competition's queue), so the release is serialised with the answers to it. And it
purges finished jobs older than ``JOB_RETENTION_SECONDS``.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.orm import Session, sessionmaker

import logs
from models import metrics
from models.broker import Producer, enqueue, producer
from models.db import make_engine, make_sessionmaker
from models.kinds import KINDS, all_queues
from models.live import Live, utcnow
from models.ranking import all_standings, changed_standings, snapshot_horizon
from models.tables import Claim, Competition, Job, MysteryBox, Question, Submission
from settings import Settings
from workers.rules import Outbox, schedule_box_expiry, schedule_claim_release

log = logging.getLogger("workers.sweeper")


def broker_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps a queue's waiting messages in: the queue's name, and its name
    with each priority step (``PRIORITY_SEP`` and the step) for messages sent with a priority."""
    return [queue] + [f"{queue}\x06\x16{step}" for step in (3, 6, 9)]


def _numbered(queue: str, family: str) -> bool:
    """Whether ``queue`` is one of ``family``'s numbered queues (``board.5``), served or not."""
    prefix, _, number = queue.partition(".")
    return prefix == family and number.isdigit()


class Sweeper:
    WHOLE_EVERY = 60.0

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], live: Live, sender: Producer) -> None:
        self.settings = settings
        self.sessions = sessions
        self.live = live
        self.sender = sender
        self._resent: dict[str, float] = {}
        # Per live competition: the transaction horizon of the last read of its teams, and when
        # (monotonic) the whole board was last written.
        self._refreshed: dict[int, tuple[int, float]] = {}
        self._swept = False

    def redis_was_emptied(self) -> bool:
        """Whether Redis lost its data since the last sweep (restarted without persistence).

        A marker key lives as long as Redis's data does; finding it gone means every message the
        broker held went with it, so every unfinished job is re-sent at once, not after SWEEP_AFTER.
        """
        created = bool(self.live.redis.set(f"{self.live.prefix}:sweeper:alive", "1", nx=True))
        first, self._swept = not self._swept, True
        return created and not first

    def resend_stale_jobs(self, everything: bool = False) -> int:
        cutoff = utcnow() - timedelta(seconds=0 if everything else self.settings.sweep_after)
        with self.sessions() as session:
            rows = session.execute(
                select(Job.id, Job.kind, Job.queue, Job.competition_id, Job.payload)
                .where(Job.status.in_(("queued", "running")), Job.created_at < cutoff)
                .order_by(Job.created_at)
                .limit(5000)
            ).all()
            stale = self._rerouted(session, rows)
        now = time.monotonic()
        # A job stuck behind a long queue is not lost: resend it at most once per
        # several sweep periods so a backlog is not multiplied.
        backoff = self.settings.sweep_after * 4
        # Nor is a job whose queue still holds messages: the consumer applies every committed job of
        # its queue whenever it takes one, so a re-send there would only add a no-op message per job
        # to a queue that is already behind (with one message per job, a backlog would double).
        busy = set() if everything else self.queues_with_messages({queue for _, _, queue in stale})
        sent = 0
        for job_id, kind, queue in stale:
            key = str(job_id)
            if queue in busy:
                continue
            if not everything and now - self._resent.get(key, -backoff) < backoff:
                continue
            enqueue(self.sender, key, kind, queue)
            self._resent[key] = now
            sent += 1
        live_ids = {str(job_id) for job_id, _, _ in stale}
        self._resent = {k: v for k, v in self._resent.items() if k in live_ids}
        if sent:
            log.warning("re-sent %d unfinished job(s)", sent)
        return sent

    def _rerouted(self, session: Session, rows: Sequence[Any]) -> list[tuple[Any, str, str]]:
        """(id, kind, queue) of each stale job, moved to its queue under today's settings if its own
        has no consumer any more.

        A job keeps the queue it was routed to; if ``BOARD_QUEUES`` or ``COMPETITION_QUEUES`` went
        down while jobs waited (the default board queues went from 4 to 2), nothing would ever take
        the ones on a queue beyond the new count. Routing is a hash of the same things as before, so
        such a job joins the queue its question's or competition's newer jobs are on, ahead of them
        (a batch takes the oldest first).
        """
        served = set(all_queues(self.settings))
        stale: list[tuple[Any, str, str]] = []
        moved = False
        for row in rows:
            queue = row.queue
            if queue not in served and row.kind in KINDS and _numbered(queue, KINDS[row.kind].family):
                try:
                    queue = KINDS[row.kind].queue(self.settings, row.competition_id,
                                                  (row.payload or {}).get("questionId"))
                except ValueError:
                    queue = row.queue  # no question to route by: left where it is, and reported by check
                else:
                    session.execute(update(Job).where(Job.id == row.id, Job.status == "queued").values(queue=queue))
                    moved = True
                    log.warning("job %s waited on %s, which no consumer takes any more; moved to %s", row.id,
                                row.queue, queue)
            stale.append((row.id, row.kind, queue))
        if moved:
            session.commit()
        return stale

    def queues_with_messages(self, queues: set[str]) -> set[str]:
        """The queues whose broker list holds messages now (kombu's Redis transport keeps one list
        per queue, and one more per priority step when messages carry a priority)."""
        names = sorted(queues)
        if not names:
            return set()
        try:
            pipe = self.live.redis.pipeline(transaction=False)
            for queue in names:
                for key in broker_lists(queue):
                    pipe.llen(key)
            counts = pipe.execute()
        except Exception:
            log.warning("could not read the queues' lengths; re-sending as if they were empty", exc_info=True)
            return set()
        steps = len(broker_lists(""))
        return {queue for i, queue in enumerate(names) if any(counts[i * steps:(i + 1) * steps])}

    def refresh_leaderboards(self) -> int:
        """Write into each live competition's cache the standings it may have missed; return how many.

        A worker announces its teams' standings after its commit, so one killed in between leaves
        the cache behind PostgreSQL. Each sweep writes the teams changed since the previous sweep's
        read (``changed_standings``), which costs what changed, not the size of the competition; the
        whole competition is written on its first sweep, after Redis lost the board, and every
        ``WHOLE_EVERY`` seconds (a change no transaction id shows, such as a team deleted).
        """
        now = time.monotonic()
        written = 0
        with self.sessions() as session:
            horizon = snapshot_horizon(session)
            competitions = session.scalars(
                select(Competition.id).where(Competition.state.in_(("open", "running", "paused")))
            ).all()
            complete = self.live.boards_complete(competitions)
            for competition_id, whole_board in zip(competitions, complete, strict=True):
                last = self._refreshed.get(competition_id)
                if not whole_board or last is None or now - last[1] >= self.WHOLE_EVERY:
                    standings = all_standings(session, competition_id)
                    self.live.rebuild(competition_id, standings)
                    self._refreshed[competition_id] = (horizon, now)
                else:
                    standings = changed_standings(session, competition_id, last[0])
                    self.live.update(competition_id, standings)
                    self._refreshed[competition_id] = (horizon, last[1])
                written += len(standings)
        for gone in self._refreshed.keys() - set(competitions):
            del self._refreshed[gone]
        return written

    def release_expired(self, limit: int = 1000) -> int:
        """Record (and send) a release job for each claim and open box past its claim timeout.

        The jobs re-check the timeout against their own createdAt, on the queue that serialises
        them with the answers; a job per claim or box at most (its Idempotency-Key).
        """
        timed_out = Competition.claim_timeout_seconds.is_not(None) & (Competition.state == "running")
        deadline = func.make_interval(0, 0, 0, 0, 0, 0, Competition.claim_timeout_seconds)
        outbox = Outbox()
        with self.sessions.begin() as session:
            claims = session.execute(
                select(Claim.id, Claim.competition_id, Claim.team_id, Question.code)
                .join(Question, Question.id == Claim.question_id)
                .join(Competition, Competition.id == Claim.competition_id)
                .where(timed_out, Claim.claimed_at + deadline < func.now(),
                       ~exists().where(Submission.team_id == Claim.team_id,
                                       Submission.question_id == Claim.question_id))
                .order_by(Claim.claimed_at)
                .limit(limit)
            ).all()
            for claim_id, competition_id, team_id, code in claims:
                schedule_claim_release(session, self.settings, competition_id, team_id, claim_id, code, "expired",
                                       outbox)
            boxes = session.execute(
                select(MysteryBox.id, MysteryBox.competition_id, MysteryBox.team_id)
                .join(Competition, Competition.id == MysteryBox.competition_id)
                .where(MysteryBox.state == "open", timed_out, MysteryBox.created_at + deadline < func.now())
                .order_by(MysteryBox.created_at)
                .limit(limit)
            ).all()
            for box_id, competition_id, team_id in boxes:
                schedule_box_expiry(session, self.settings, competition_id, team_id, box_id, outbox)
        for job_id, kind, queue in outbox.enqueue:
            enqueue(self.sender, job_id, kind, queue)
        if outbox.enqueue:
            log.info("sent %d release job(s) for claims and boxes past their timeout", len(outbox.enqueue))
        return len(outbox.enqueue)

    def purge_finished_jobs(self, batch: int = 5000) -> int:
        """Delete finished jobs older than the retention period, a batch per sweep."""
        cutoff = utcnow() - timedelta(seconds=self.settings.job_retention_seconds)
        with self.sessions.begin() as session:
            oldest = (
                select(Job.id)
                .where(Job.status.in_(("succeeded", "failed")), Job.finished_at < cutoff)
                .order_by(Job.finished_at)
                .limit(batch)
            )
            purged = session.execute(delete(Job).where(Job.id.in_(oldest.scalar_subquery()))).rowcount
        if purged:
            log.info("purged %d finished job(s) older than %d s", purged, self.settings.job_retention_seconds)
        return int(purged or 0)

    def sweep_once(self) -> None:
        emptied = self.redis_was_emptied()
        if emptied:
            log.warning("Redis lost its data: re-sending every unfinished job now")
        tally = metrics.Tally()
        try:
            tally.inc(metrics.RESENT, by=self.resend_stale_jobs(everything=emptied))
            tally.inc(metrics.RELEASES, by=self.release_expired())
            tally.inc(metrics.PURGED, by=self.purge_finished_jobs())
            self.refresh_leaderboards()
        except Exception:
            tally.inc(metrics.SWEEPS, ("error",))
            raise
        else:
            tally.inc(metrics.SWEEPS, ("ok",))
            tally.set(metrics.LAST_SWEEP, (), time.time())
        finally:
            # Kept in Redis and served by the API's /metrics, like the consumers' (models/metrics.py).
            tally.flush(self.live.redis, self.settings.redis_prefix)


def main() -> int:
    settings = Settings.from_env()
    logs.configure(settings, "sweeper")
    engine = make_engine(settings, pool_size=1)
    sweeper = Sweeper(settings, make_sessionmaker(engine), Live(settings), producer(settings))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("sweeping every %.1f s for jobs older than %.1f s", settings.sweep_interval, settings.sweep_after)
    while not stop.is_set():
        try:
            sweeper.sweep_once()
        except Exception:
            log.exception("sweep failed; trying again next period")
        stop.wait(settings.sweep_interval)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
