"""The Socket.IO application: who may connect, which rooms they join, what they are sent.

What this process holds about a competition (its freeze, its state) is a cache of PostgreSQL:
settings messages update it at once, and it is read again before every public broadcast and
every ``REALTIME_REFRESH`` seconds, so a lost message cannot leak live standings during a freeze.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec
import socketio
from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker

from models import events
from models.db import make_engine, make_sessionmaker
from models.events import Claim, Release, ScoreChange, parse_iso
from models.live import FrozenBoards, Live, competition_room, iso, organisers_room, team_room, utcnow
from models.ranking import all_standings, frozen_board, is_frozen
from models.tables import Competition, Job, Team
from realtime import fanout
from realtime.fanout import Broadcaster
from realtime.metrics import RealtimeMetrics, serve_metrics
from realtime.server import Runtime
from settings import Settings

log = logging.getLogger("realtime")

K = TypeVar("K")
V = TypeVar("V")

# The API's slug rule: anything else cannot be a competition and costs no look-up.
SLUG = re.compile(r"^[a-z0-9][a-z0-9\-]{0,63}$")


class LRU(Generic[K, V]):
    """A bounded mapping: past ``capacity`` entries, the least recently used one is forgotten.

    Keys come from clients (competition names, tokens), so nothing here may grow without bound.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def items(self) -> list[tuple[K, V]]:
        return list(self._data.items())


@dataclass(frozen=True)
class CompetitionInfo:
    id: int
    slug: str
    leaderboard_size: int
    state: str = "running"
    freeze_at: datetime | None = None

    def frozen(self) -> bool:
        return is_frozen(self.freeze_at, utcnow())

    @classmethod
    def of(cls, c: Any) -> CompetitionInfo:
        return cls(c.id, c.slug, c.leaderboard_size, c.state, c.freeze_at)


_INFO_COLUMNS = (Competition.id, Competition.slug, Competition.leaderboard_size, Competition.state,
                 Competition.freeze_at)


def team_of_token(digest: bytes) -> Select[tuple[int]]:
    return select(Team.competition_id).where(Team.token_hash == digest)


def pending_registration(competition_id: int, digest: bytes) -> Select[tuple[Any]]:
    """A registration of this token still waiting or running (the condition of ``ix_jobs_unfinished``)."""
    return select(Job.id).where(
        Job.owner_hash == digest,
        Job.status.in_(("queued", "running")),
        Job.kind == "register",
        Job.competition_id == competition_id,
    ).limit(1)


class Directory:
    """Database look-ups for connecting clients and broadcasts, cached briefly and boundedly.

    They run on the event loop itself: each is one indexed query of a millisecond or so, and
    SQLAlchemy's pool guards itself with locks that eventlet and gevent make green, which must
    never be taken from a real OS thread (a thread pool here hangs under a connect storm).
    """

    COMPETITIONS = 1024
    TOKENS = 20_000
    TOKEN_TTL = 60.0

    def __init__(self, sessions: sessionmaker[Session], ttl: float = 1.0) -> None:
        self.sessions = sessions
        self.ttl = ttl
        self._competitions: LRU[str, tuple[float, CompetitionInfo | None]] = LRU(self.COMPETITIONS)
        self._teams: LRU[bytes, tuple[float, int]] = LRU(self.TOKENS)
        self._rebuilding: LRU[int, threading.Lock] = LRU(self.COMPETITIONS)

    def competition(self, slug: str) -> CompetitionInfo | None:
        """The competition of this slug; unknown names are remembered only briefly and boundedly."""
        if not SLUG.match(slug):
            return None
        cached = self._competitions.get(slug)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        with self.sessions() as session:
            row = session.execute(select(*_INFO_COLUMNS).where(Competition.slug == slug)).one_or_none()
        info = None if row is None else CompetitionInfo.of(row)
        self._competitions.put(slug, (time.monotonic(), info))
        return info

    def load(self, ids: Iterable[int]) -> dict[int, CompetitionInfo]:
        """Fresh from PostgreSQL: the competitions of these ids that still exist."""
        ids = list(ids)
        if not ids:
            return {}
        with self.sessions() as session:
            rows = session.execute(select(*_INFO_COLUMNS).where(Competition.id.in_(ids))).all()
        infos = {r.id: CompetitionInfo.of(r) for r in rows}
        for info in infos.values():
            self.remember(info)
        return infos

    def remember(self, info: CompetitionInfo) -> None:
        self._competitions.put(info.slug, (time.monotonic(), info))

    def frozen_top(self, info: CompetitionInfo, boards: FrozenBoards) -> list[dict[str, Any]]:
        assert info.freeze_at is not None
        with self.sessions() as session:
            board = frozen_board(session, boards, info.id, info.freeze_at, utcnow())
        return board[: info.leaderboard_size]

    def token_known(self, competition_id: int, digest: bytes) -> bool:
        """A team's token, or the token of its registration while that is still queued or running.

        A registration that failed created no team and is no longer unfinished, so its token is
        refused. Both look-ups are index scans: ``teams.token_hash`` is unique, and the pending
        registration is looked up among unfinished jobs (``ix_jobs_unfinished``, or an index on
        ``jobs.owner_hash``), never by scanning the jobs table.
        """
        cached = self._teams.get(digest)
        if cached and time.monotonic() - cached[0] < self.TOKEN_TTL:
            return cached[1] == competition_id
        with self.sessions() as session:
            team = session.scalar(team_of_token(digest))
            if team is not None:
                self._teams.put(digest, (time.monotonic(), team))
                return team == competition_id
            pending = session.scalar(pending_registration(competition_id, digest))
        return pending is not None

    def ensure_board(self, competition_id: int, live: Live) -> None:
        """Rebuild the leaderboard cache whole from PostgreSQL unless a rebuild has marked it
        complete (after a Redis restart, or a worker's update that landed on a lost board); once,
        however many clients and broadcasts ask at the same moment."""
        if live.has_board(competition_id):
            return
        lock = self._rebuilding.get(competition_id)
        if lock is None:
            lock = threading.Lock()
            self._rebuilding.put(competition_id, lock)
        # threading.Lock is the green lock under eventlet or gevent (patched at start-up).
        with lock:
            if live.has_board(competition_id):
                return
            with self.sessions() as session:
                standings = all_standings(session, competition_id)
            live.rebuild(competition_id, standings)
            log.info("rebuilt the leaderboard cache of competition %d (%d teams)", competition_id, len(standings))


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

    def __init__(self, url: str, channel: str, sequence: Sequence, metrics: RealtimeMetrics) -> None:
        super().__init__(url, channel=channel)
        self.sequence = sequence
        self.metrics = metrics

    def _handle_emit(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict) and "competition" in data[0]:
            data[0]["seq"] = self.sequence.next()
            self.metrics.emitted(str(message.get("event")), data[0].get("at"))
        super()._handle_emit(message)


@dataclass
class _Pending:
    """One competition's news waiting for its next broadcast, each item with its commit time."""

    info: CompetitionInfo
    changes: list[tuple[str, ScoreChange]] = field(default_factory=list)
    # Claims and releases in the order they happened, so a client never sees a release first.
    board: list[tuple[str, Claim | Release]] = field(default_factory=list)
    last_emit: float = float("-inf")
    # How long the last broadcast took to write to every local client: CPU, with no yield in it
    # (the reads before it wait on PostgreSQL and Redis, which costs this process nothing).
    cost: float = 0.0
    timer: bool = False
    # Public events numbered so far; a connecting client's snapshot is retaken if one went out
    # while it was being read (see ``connect``).
    sent: int = 0
    # A broadcast yields (PostgreSQL, Redis); a second one for the competition must wait for it,
    # or its newer changes could reach clients first. (threading.Lock is green once patched.)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Coalescer:
    """Public leaderboard broadcasts, at most one per interval per competition.

    The first change after a quiet spell goes out at once; later ones are merged, and the
    trailing broadcast reads the leaderboard fresh, so the last one always shows the final
    standings. Each realtime process does this for its own clients (``ignore_queue``).

    The spacing grows with the audience: the next broadcast waits at least ``LOAD_FACTOR`` times
    as long as the last one took to write to every client, which keeps broadcasting under half
    of the process and leaves room for connects and private events. The oldest change of a
    broadcast waits about one spacing, so the factor is also most of the spectators' latency:
    at 2,000 clients a broadcast takes 55-75 ms to write on the benchmark's shared 2 cores, and
    with 3x that (165-225 ms) the factor, not the interval, set the pace; at 2x the interval
    rules up to about 2,000 clients per process (fan-out benchmark, issue 10). Past that, the
    machine's cores are the limit whichever the factor: at 5,000 clients per process 2x and 3x
    measured about the same, the writes taking longer at 2x.
    """

    LOAD_FACTOR = 2.0
    COMPETITIONS = 1024

    def __init__(self, sio: socketio.Server, live: Live, directory: Directory, runtime: Runtime,
                 interval: float, sequence: Sequence, metrics: RealtimeMetrics, broadcaster: Broadcaster) -> None:
        self.sio = sio
        self.broadcaster = broadcaster
        self.sequence = sequence
        self.live = live
        self.directory = directory
        self.runtime = runtime
        self.interval = interval
        self.metrics = metrics
        self.pending: LRU[int, _Pending] = LRU(self.COMPETITIONS)

    def watch(self, info: CompetitionInfo) -> _Pending:
        """The broadcast state of a competition this process serves (kept fresh by ``refresh``)."""
        state = self.pending.get(info.id)
        if state is None:
            state = _Pending(info)
            self.pending.put(info.id, state)
        return state

    def apply(self, state: _Pending, info: CompetitionInfo) -> None:
        """Take newer settings; lifting a freeze shows everyone what they missed, in one broadcast.

        The settings message and the periodic re-read may both bring the news; whichever comes
        first reveals, the other then finds the freeze already gone.
        """
        was_frozen = state.info.frozen()
        state.info = info
        self.directory.remember(info)
        if was_frozen and not info.frozen():
            self.flush(state, force=True)

    def on_settings(self, message: events.CompetitionSettings) -> None:
        info = CompetitionInfo(
            id=message.competition_id,
            slug=message.competition,
            leaderboard_size=message.leaderboard_size,
            state=message.state,
            freeze_at=parse_iso(message.freeze_at) if message.freeze_at else None,
        )
        self.apply(self.watch(info), info)

    def on_message(self, raw: bytes) -> None:
        message = events.decode_change(raw)
        if isinstance(message, events.CompetitionSettings):
            self.on_settings(message)
            return
        state = self.pending.get(message.competition_id)
        if state is None:
            info = self.directory.competition(message.competition)
            if info is None:
                return
            state = self.watch(info)
        state.changes.extend((message.at, c) for c in message.changes)
        state.board.extend((message.at, c) for c in message.claims)
        state.board.extend((message.at, r) for r in message.releases)
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
        with state.lock:
            # Taken under the lock, so whoever broadcasts later also sends the later news.
            if not state.changes and not state.board and not force:
                return
            changes, state.changes = state.changes, []
            board, state.board = state.board, []
            if not force and not self._audience(state.info.slug):
                # Nobody here to tell: no events, and of the reads only the board's mark (a board
                # lost with Redis is rebuilt now, as a broadcast would, not at the next reader). A
                # client connecting meanwhile must still retake a snapshot read before this news
                # (see ``connect``).
                state.sent += 1
                # Spaced like broadcasts: news arrives per batch, many times a second.
                state.last_emit = time.monotonic()
                self.directory.ensure_board(state.info.id, self.live)
                return
            # Two workers can finish jobs of one team moments apart and publish in the other
            # order; their commit times put the team's changes back in the order they happened.
            changes.sort(key=lambda item: item[0])
            state.last_emit = started = time.monotonic()
            try:
                self._broadcast(state, changes, board, force)
            finally:
                self.metrics.broadcast.observe(time.monotonic() - started)

    def _audience(self, slug: str) -> bool:
        """Whether any client of this process is in the competition's public or organisers' room."""
        rooms = self.sio.manager.rooms.get("/", {})
        return bool(rooms.get(competition_room(slug)) or rooms.get(organisers_room(slug)))

    def _reload(self, state: _Pending) -> None:
        """Read the competition again, so a lost settings message cannot leak live standings."""
        try:
            fresh = self.directory.load([state.info.id]).get(state.info.id)
        except Exception:
            log.warning("could not re-read competition %s; using what this process knows", state.info.slug,
                        exc_info=True)
            return
        if fresh is not None:
            state.info = fresh

    def _send(self, state: _Pending, batch: list[tuple[events.Event, list[str]]]) -> None:
        state.sent += len(batch)
        started = time.monotonic()
        reached = self.broadcaster.send(batch)
        state.cost = time.monotonic() - started
        self.metrics.write.observe(state.cost)
        for event, _ in batch:
            name = event.__struct_config__.tag
            self.metrics.emitted(str(name), getattr(event, "oldest_at", None) or event.at)
        for name, count in reached.items():
            self.metrics.deliveries.labels(str(name)).inc(count)

    def _broadcast(self, state: _Pending, changes: list[tuple[str, ScoreChange]],
                   board: list[tuple[str, Claim | Release]], force: bool) -> None:
        # The competition first (a freeze it missed hides this broadcast from spectators), then
        # the board; every event is numbered after those reads and sent with no yield after its
        # number: the reads yield to other greenlets, which may deliver (and number) events
        # meanwhile, so a number taken before a read would arrive after larger ones, or carry
        # older standings than a larger one.
        rows = None
        if changes or force:
            self._reload(state)
            self.directory.ensure_board(state.info.id, self.live)
            rows = self.live.top(state.info.id, state.info.leaderboard_size)
        info = state.info
        slug = info.slug
        everyone = [competition_room(slug), organisers_room(slug)]
        batch: list[tuple[events.Event, list[str]]] = []
        # Claims and releases in runs of one kind: the latest item's fields, and the whole run.
        for run in _runs(board):
            at, oldest = max(a for a, _ in run), min(a for a, _ in run)
            last = run[-1][1]
            event: events.Event
            if isinstance(last, Claim):
                event = events.QuestionClaimed(
                    competition=slug, seq=self.sequence.next(), at=at, oldest_at=oldest,
                    question_id=last.question_id, team_name=last.team_name,
                    claims=[c for _, c in run])  # type: ignore[misc]
            else:
                event = events.QuestionReleased(
                    competition=slug, seq=self.sequence.next(), at=at, oldest_at=oldest,
                    question_id=last.question_id, reason=last.reason,
                    releases=[r for _, r in run])  # type: ignore[misc]
            batch.append((event, everyone))
        if rows is not None:
            now = iso(utcnow())
            update = events.LeaderboardUpdate(
                competition=slug,
                seq=self.sequence.next(),
                at=max((a for a, _ in changes), default=now),
                oldest_at=min((a for a, _ in changes), default=now),
                leaderboard=msgspec.convert(rows[: info.leaderboard_size], list[events.Standing]),
                changes=[c for _, c in changes],
            )
            # During a freeze spectators keep the standings at the freeze; organisers watch live.
            batch.append((update, [organisers_room(slug)] if info.frozen() else everyone))
        if batch:
            self._send(state, batch)

    def refresh(self) -> None:
        """Re-read every competition this process serves: repairs a lost settings message."""
        states = dict(self.pending.items())
        fresh = self.directory.load(states)
        for competition_id, state in states.items():
            info = fresh.get(competition_id)
            if info is None:
                self.pending.pop(competition_id)
            elif info != state.info:
                self.apply(state, info)

    def refresh_forever(self, period: float) -> None:
        while True:
            self.runtime.sleep(period)
            try:
                self.refresh()
            except Exception:
                log.warning("refreshing competitions failed; trying again", exc_info=True)

    def listen(self) -> None:
        while True:
            try:
                pubsub = self.live.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.live.changes_channel)
                for message in pubsub.listen():
                    if isinstance(message.get("data"), bytes):
                        try:
                            self.on_message(message["data"])
                        except Exception:
                            log.exception("bad change message: %r", message["data"][:300])
            except Exception:
                log.warning("lost the changes channel; reconnecting", exc_info=True)
                self.runtime.sleep(0.5)


def _runs(board: list[tuple[str, Claim | Release]]) -> list[list[tuple[str, Claim | Release]]]:
    runs: list[list[tuple[str, Claim | Release]]] = []
    for item in board:
        if runs and type(runs[-1][-1][1]) is type(item[1]):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def create_realtime(settings: Settings, runtime: Runtime) -> Any:
    """Build the Socket.IO server and return the WSGI app that serves it."""
    live = Live(settings)
    engine = make_engine(settings, pool_size=2)
    directory = Directory(make_sessionmaker(engine), ttl=settings.realtime_refresh)
    sequence = Sequence()
    metrics = RealtimeMetrics()
    manager = NumberingRedisManager(settings.redis_url, live.socketio_channel, sequence, metrics)
    sio = socketio.Server(
        async_mode=settings.realtime_async_mode,
        client_manager=manager,
        cors_allowed_origins=list(settings.cors_origins) or "*",
        ping_interval=25,
        ping_timeout=20,
        max_http_buffer_size=16 * 1024,
    )
    broadcaster = Broadcaster(sio, runtime.spawn, direct=fanout.install(sio))
    coalescer = Coalescer(sio, live, directory, runtime, settings.broadcast_interval, sequence, metrics, broadcaster)

    boards = FrozenBoards(live)

    def snapshot(info: CompetitionInfo, organiser: bool) -> events.LeaderboardUpdate:
        directory.ensure_board(info.id, live)
        frozen = info.frozen() and not organiser
        board = directory.frozen_top(info, boards) if frozen else live.top(info.id, info.leaderboard_size)
        now = iso(utcnow())
        # Numbered after the read and sent straight away, with no yield in between, so nothing
        # this process delivers to the client before it carries a higher number. (A change that
        # lands during the read shows in the next broadcast, which always has whole standings.)
        return events.LeaderboardUpdate(
            competition=info.slug,
            seq=sequence.next(),
            at=now,
            oldest_at=now,
            leaderboard=msgspec.convert(board, list[events.Standing]),
            changes=[],
        )

    @sio.event
    def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        auth = auth if isinstance(auth, dict) else {}
        slug = auth.get("competition")
        if not isinstance(slug, str) or not slug:
            raise socketio.exceptions.ConnectionRefusedError("auth.competition is required")
        info = directory.competition(slug)
        if info is None:
            raise socketio.exceptions.ConnectionRefusedError(f"unknown competition {slug[:64]!r}")
        token = auth.get("token")
        rooms = [competition_room(slug)]
        organiser = False
        if token is not None:
            if not isinstance(token, str) or not token or len(token) > 512:
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
        # The snapshot is read before the client joins its rooms, and read again if a public
        # event went out meanwhile; from the read to the emit nothing yields, so the snapshot is
        # the client's first event and no broadcast with older standings can follow it.
        state = coalescer.watch(info)
        for _ in range(3):
            sent = state.sent
            update = snapshot(info, organiser)
            if state.sent == sent:
                break
        for room in rooms:
            sio.enter_room(sid, room)
        events.emit(sio, update, room=sid, ignore_queue=True)
        metrics.emitted("leaderboard_update", None)
        metrics.clients.inc()

    @sio.event
    def disconnect(sid: str, *_: Any) -> None:
        metrics.clients.dec()

    def http(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO")
        if path in ("/healthz", "/readyz"):
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"status":"ok"}']
        if path == "/metrics":
            return serve_metrics(metrics, settings, environ, start_response)
        start_response("404 Not Found", [("Content-Type", "application/problem+json")])
        return [b'{"type":"about:blank","title":"Not found","status":404}']

    sio.start_background_task(coalescer.listen)
    sio.start_background_task(coalescer.refresh_forever, settings.realtime_refresh)
    return socketio.WSGIApp(sio, http)
