"""The sweeper: ``python -m workers.sweeper``.

A job is a row before it is a message, so a message lost between the API's commit and the
broker (or dropped by a broker restart) is found here and sent again; redelivery is
harmless because every task is idempotent. It also rebuilds the Redis leaderboard cache of
live competitions from PostgreSQL, which repairs a Redis restart or a lost announcement.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from datetime import timedelta

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import logs
from models.db import make_engine, make_sessionmaker
from models.live import Live, utcnow
from models.ranking import all_standings
from models.tables import Competition, Job
from settings import Settings
from workers.celery_app import create_celery
from workers.enqueue import enqueue

log = logging.getLogger("workers.sweeper")


class Sweeper:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], live: Live, celery: Celery) -> None:
        self.settings = settings
        self.sessions = sessions
        self.live = live
        self.celery = celery
        self._resent: dict[str, float] = {}

    def resend_stale_jobs(self) -> int:
        cutoff = utcnow() - timedelta(seconds=self.settings.sweep_after)
        with self.sessions() as session:
            stale = session.execute(
                select(Job.id, Job.kind, Job.queue)
                .where(Job.status.in_(("queued", "running")), Job.created_at < cutoff)
                .order_by(Job.created_at)
                .limit(5000)
            ).all()
        now = time.monotonic()
        # A job stuck behind a long queue is not lost: resend it at most once per
        # several sweep periods so a backlog is not multiplied.
        backoff = self.settings.sweep_after * 4
        sent = 0
        for job_id, kind, queue in stale:
            key = str(job_id)
            if now - self._resent.get(key, -backoff) < backoff:
                continue
            enqueue(self.celery, key, kind, queue)
            self._resent[key] = now
            sent += 1
        live_ids = {str(r.id) for r in stale}
        self._resent = {k: v for k, v in self._resent.items() if k in live_ids}
        if sent:
            log.warning("re-sent %d unfinished job(s)", sent)
        return sent

    def refresh_leaderboards(self) -> int:
        with self.sessions() as session:
            competitions = session.scalars(
                select(Competition.id).where(Competition.state.in_(("open", "running", "paused")))
            ).all()
            for competition_id in competitions:
                self.live.update(competition_id, all_standings(session, competition_id))
        return len(competitions)

    def sweep_once(self) -> None:
        self.resend_stale_jobs()
        self.refresh_leaderboards()


def main() -> int:
    settings = Settings.from_env()
    logs.configure(settings, "sweeper")
    engine = make_engine(settings, pool_size=1)
    sweeper = Sweeper(settings, make_sessionmaker(engine), Live(settings), create_celery(settings))
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
