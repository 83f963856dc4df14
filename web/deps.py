"""What the web process's resources need, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

import redis
import socketio
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.broker import Producer
from models.db import make_autocommit_sessionmaker, make_engine, make_sessionmaker
from models.live import Live, redis_client
from settings import Settings
from web.waiter import JobWaiter, job_reader


@dataclass
class Deps:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    autocommit: sessionmaker[Session]
    redis: redis.Redis
    live: Live
    # Sends job messages only (models/broker.py): the API runs no task.
    producer: Producer
    waiter: JobWaiter
    sio: socketio.RedisManager

    @classmethod
    def create(cls, settings: Settings) -> Deps:
        # Under gevent a burst of requests would open overflow connections and close each again at
        # once (a PostgreSQL backend started per burst); greenlets queue for a pooled one instead.
        engine = make_engine(settings, max_overflow=0 if settings.api_worker_class == "gevent" else None)
        client = redis_client(settings.redis_url)
        live = Live(settings, client)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            autocommit=make_autocommit_sessionmaker(engine),
            redis=client,
            live=live,
            producer=Producer(client),
            waiter=JobWaiter(
                redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, health_check_interval=30),
                live.jobs_channel,
                settings.wait_capacity,
                # A connection of its own, so that telling waiters their jobs finished never queues
                # behind the requests for the request pool's connections.
                job_reader(make_engine(settings, pool_size=1, max_overflow=2)),
            ),
            sio=socketio.RedisManager(settings.redis_url, channel=live.socketio_channel, write_only=True),
        )

    def close(self) -> None:
        """Close every connection these dependencies opened (an app built in-process, in tests)."""
        self.engine.dispose()
        self.redis.close()
        self.waiter._redis.close()
        if self.sio.redis is not None:
            self.sio.redis.close()
        self.producer.close()
