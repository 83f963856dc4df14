"""The Socket.IO application: who may connect, which rooms they join, what they are sent."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import socketio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, make_sessionmaker
from models.live import FrozenBoards, Live, Standing, competition_room, iso, organisers_room, team_room, utcnow
from models.ranking import all_standings, frozen_board, is_frozen
from models.tables import Competition, Job, Team
from realtime.server import Runtime
from settings import Settings

log = logging.getLogger("realtime")


@dataclass(frozen=True)
class CompetitionInfo:
    id: int
    slug: str
    leaderboard_size: int
    freeze_at: datetime | None = None

    def frozen(self) -> bool:
        return is_frozen(self.freeze_at, utcnow())


class Directory:
    """Database look-ups for connecting clients (cached briefly).

    They run on the event loop itself: each is one indexed query of a millisecond or so, and
    SQLAlchemy's pool guards itself with locks that eventlet and gevent make green, which must
    never be taken from a real OS thread (a thread pool here hangs under a connect storm).
    """

    TTL = 30.0

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._competitions: dict[str, tuple[float, CompetitionInfo | None]] = {}
        self._rebuilding: dict[int, threading.Lock] = {}

    def competition(self, slug: str) -> CompetitionInfo | None:
        cached = self._competitions.get(slug)
        if cached and time.monotonic() - cached[0] < self.TTL:
            return cached[1]
        info = self._load_competition(slug)
        self._competitions[slug] = (time.monotonic(), info)
        return info

    def _load_competition(self, slug: str) -> CompetitionInfo | None:
        with self.sessions() as session:
            c = session.scalar(select(Competition).where(Competition.slug == slug))
            return None if c is None else CompetitionInfo(c.id, c.slug, c.leaderboard_size, c.freeze_at)

    def remember(self, info: CompetitionInfo) -> None:
        self._competitions[info.slug] = (time.monotonic(), info)

    def frozen_top(self, info: CompetitionInfo, boards: FrozenBoards) -> list[dict[str, Any]]:
        assert info.freeze_at is not None
        freeze_at = info.freeze_at

        def load() -> list[dict[str, Any]]:
            with self.sessions() as session:
                return frozen_board(session, boards, info.id, freeze_at, utcnow())

        return load()[: info.leaderboard_size]

    def token_known(self, competition_id: int, digest: bytes) -> bool:
        """A team token, or the token of a registration still in the queue."""
        return self._token_known(competition_id, digest)

    def _token_known(self, competition_id: int, digest: bytes) -> bool:
        with self.sessions() as session:
            team = session.scalar(select(Team.competition_id).where(Team.token_hash == digest))
            if team is not None:
                return team == competition_id
            pending = session.scalar(
                select(Job.id).where(Job.owner_hash == digest, Job.competition_id == competition_id,
                                     Job.kind == "register").limit(1)
            )
            return pending is not None

    def ensure_board(self, competition_id: int, live: Live) -> None:
        """Rebuild an empty leaderboard cache (after a Redis restart) once, however many
        clients arrive at the same moment."""
        if live.has_board(competition_id):
            return
        # threading.Lock is the green lock under eventlet or gevent (patched at start-up).
        with self._rebuilding.setdefault(competition_id, threading.Lock()):
            if live.has_board(competition_id):
                return

            def read() -> list[Standing]:
                with self.sessions() as session:
                    return all_standings(session, competition_id)

            live.update(competition_id, read())


class Sequence:
    """This process's event numbers: increasing in the order it hands events to clients.

    Numbered on delivery, not at the source, because events reach a client by two paths
    (workers' events through Redis, broadcasts made here); seeded from the clock so a client
    that reconnects to this or another process after a restart still sees larger numbers.
    """

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last = max(self.last + 1, time.time_ns() // 1000)
        return self.last


class NumberingRedisManager(socketio.RedisManager):
    """Stamps ``seq`` on every event that arrives from other processes as it is delivered."""

    def __init__(self, url: str, channel: str, sequence: Sequence) -> None:
        super().__init__(url, channel=channel)
        self.sequence = sequence

    def _handle_emit(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict) and "competition" in data[0]:
            data[0]["seq"] = self.sequence.next()
        super()._handle_emit(message)


@dataclass
class _Pending:
    info: CompetitionInfo
    changes: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    at: str = ""
    last_emit: float = float("-inf")
    # How long the last broadcast took to hand to every local client.
    cost: float = 0.0
    timer: bool = False


class Coalescer:
    """Public leaderboard broadcasts, at most one per interval per competition.

    The first change after a quiet spell goes out at once; later ones are merged, and the
    trailing broadcast reads the leaderboard fresh, so the last one always shows the final
    standings. Each realtime process does this for its own clients (``ignore_queue``).

    The spacing grows with the audience: a broadcast to thousands of clients takes a large
    part of a second, so the next one waits at least ``LOAD_FACTOR`` times as long, which keeps
    broadcasting under a third of the process and leaves room for connects and private events.
    """

    LOAD_FACTOR = 3.0

    def __init__(self, sio: socketio.Server, live: Live, directory: Directory, runtime: Runtime,
                 interval: float, sequence: Sequence) -> None:
        self.sio = sio
        self.sequence = sequence
        self.live = live
        self.directory = directory
        self.runtime = runtime
        self.interval = interval
        self.pending: dict[int, _Pending] = {}

    def on_settings(self, message: dict[str, Any]) -> None:
        freeze = message.get("freezeAt")
        info = CompetitionInfo(
            id=message["competitionId"],
            slug=message["competition"],
            leaderboard_size=message["leaderboardSize"],
            freeze_at=datetime.fromisoformat(freeze.replace("Z", "+00:00")) if freeze else None,
        )
        self.directory.remember(info)
        state = self.pending.setdefault(info.id, _Pending(info))
        state.info = info
        if message.get("reveal"):
            # Lifting the freeze shows everyone the standings they missed, in one broadcast.
            self.flush(state, force=True)

    def on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "competition":
            self.on_settings(message)
            return
        slug = message["competition"]
        state = self.pending.get(message["competitionId"])
        if state is None:
            info = self.directory.competition(slug)
            if info is None:
                return
            state = self.pending[info.id] = _Pending(info)
        state.changes.extend(message.get("changes", ()))
        state.claims.extend(message.get("claims", ()))
        state.at = max(state.at, message["at"])
        if state.timer:
            return
        wait = state.last_emit + max(self.interval, self.LOAD_FACTOR * state.cost) - time.monotonic()
        if wait <= 0:
            self.flush(state)
        else:
            state.timer = True
            self.runtime.spawn(self._flush_later, state, wait)

    def _flush_later(self, state: _Pending, wait: float) -> None:
        self.runtime.sleep(wait)
        state.timer = False
        self.flush(state)

    def flush(self, state: _Pending, force: bool = False) -> None:
        if not state.changes and not state.claims and not force:
            return
        changes, state.changes = state.changes, []
        claims, state.claims = state.claims, []
        state.last_emit = started = time.monotonic()
        try:
            self._broadcast(state, changes, claims, force)
        finally:
            state.cost = time.monotonic() - started

    def _broadcast(self, state: _Pending, changes: list[dict[str, Any]], claims: list[dict[str, Any]],
                   force: bool) -> None:
        info = state.info
        at = state.at or iso(utcnow())
        everyone = [competition_room(info.slug), organisers_room(info.slug)]
        if claims:
            # The latest claim in the contract's fields, every claim merged since the last one in
            # ``claims``; numbered when sent so every client sees increasing numbers.
            payload = {"competition": info.slug, "seq": self.sequence.next(), "at": at,
                       **claims[-1], "claims": claims}
            self.sio.emit("question_claimed", payload, room=everyone, ignore_queue=True)
        if not changes and not force:
            return
        # Read before numbering: the read yields to other greenlets, which may deliver (and
        # number) private events meanwhile; a number taken before it would then arrive late.
        leaderboard = self.live.top(info.id, info.leaderboard_size)
        payload = {
            "competition": info.slug,
            "seq": self.sequence.next(),
            "at": at,
            "leaderboard": leaderboard,
            "changes": changes,
        }
        # During a freeze spectators keep the standings at the freeze; organisers watch live.
        rooms = organisers_room(info.slug) if info.frozen() else everyone
        self.sio.emit("leaderboard_update", payload, room=rooms, ignore_queue=True)

    def listen(self) -> None:
        while True:
            try:
                pubsub = self.live.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.live.changes_channel)
                for message in pubsub.listen():
                    if isinstance(message.get("data"), bytes):
                        try:
                            self.on_message(json.loads(message["data"]))
                        except Exception:
                            log.exception("bad change message")
            except Exception:
                log.warning("lost the changes channel; reconnecting", exc_info=True)
                self.runtime.sleep(0.5)


def create_realtime(settings: Settings, runtime: Runtime) -> Any:
    """Build the Socket.IO server and return the WSGI app that serves it."""
    live = Live(settings)
    engine = make_engine(settings, pool_size=2)
    directory = Directory(make_sessionmaker(engine))
    sequence = Sequence()
    manager = NumberingRedisManager(settings.redis_url, live.socketio_channel, sequence)
    sio = socketio.Server(
        async_mode=settings.realtime_async_mode,
        client_manager=manager,
        cors_allowed_origins=list(settings.cors_origins) or "*",
        ping_interval=25,
        ping_timeout=20,
        max_http_buffer_size=16 * 1024,
    )
    coalescer = Coalescer(sio, live, directory, runtime, settings.broadcast_interval, sequence)

    boards = FrozenBoards(live)

    def snapshot(info: CompetitionInfo, organiser: bool) -> dict[str, Any]:
        directory.ensure_board(info.id, live)
        frozen = info.frozen() and not organiser
        board = directory.frozen_top(info, boards) if frozen else live.top(info.id, info.leaderboard_size)
        # Numbered after the read and sent straight away, with no yield in between, so nothing
        # this process delivers to the client before it carries a higher number. (A change that
        # lands during the read shows in the next broadcast, which always has whole standings.)
        return {
            "competition": info.slug,
            "seq": sequence.next(),
            "at": iso(utcnow()),
            "leaderboard": board,
            "changes": [],
        }

    @sio.event
    def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        auth = auth if isinstance(auth, dict) else {}
        slug = auth.get("competition")
        if not isinstance(slug, str) or not slug:
            raise socketio.exceptions.ConnectionRefusedError("auth.competition is required")
        info = directory.competition(slug)
        if info is None:
            raise socketio.exceptions.ConnectionRefusedError(f"unknown competition {slug!r}")
        token = auth.get("token")
        rooms = [competition_room(slug)]
        organiser = False
        if token is not None:
            if not isinstance(token, str) or not token:
                raise socketio.exceptions.ConnectionRefusedError("auth.token must be a string")
            if hmac.compare_digest(token.encode(), settings.admin_token.encode()):
                # Organisers are kept out of the public room so a freeze does not hide anything from them.
                organiser = True
                rooms = [organisers_room(slug)]
            else:
                digest = hashlib.sha256(token.encode()).digest()
                if not directory.token_known(info.id, digest):
                    raise socketio.exceptions.ConnectionRefusedError("invalid token")
                rooms.append(team_room(digest))
        for room in rooms:
            sio.enter_room(sid, room)
        sio.emit("leaderboard_update", snapshot(info, organiser), to=sid, ignore_queue=True)

    def health(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") in ("/healthz", "/readyz"):
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"status":"ok"}']
        start_response("404 Not Found", [("Content-Type", "application/problem+json")])
        return [b'{"type":"about:blank","title":"Not found","status":404}']

    sio.start_background_task(coalescer.listen)
    return socketio.WSGIApp(sio, health)
