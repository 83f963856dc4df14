"""Socket.IO spectators: many python-socketio clients in one asyncio process, counting events.

    .venv/bin/python -m loadtests.spectators --url http://127.0.0.1:8001 --fixture f.json \
        --clients 2000 [--organisers 10] [--duration 300] [--out spectators.json]

Every client connects over the websocket transport with ``auth={"competition": slug}``; a few
(``--organisers``) also send the organiser token and so join the organisers' room, which gets
every ``score_update``. For each event the client notes its arrival time; commit-to-event latency
is arrival minus the commit time of the oldest change the event carries: ``oldestAt`` on the
coalesced broadcasts (``leaderboard_update``, ``question_claimed``), ``at`` on the others (same
machine, same clock). Measured from ``at`` (the newest change), a coalesced broadcast would hide
up to a whole coalescing interval of waiting. The connect-time snapshot (a ``leaderboard_update``
with no changes) is counted but not timed.

The process stops listening at ``--duration`` or on SIGTERM/SIGINT. It then lets the clients
drain what is still on its way: after each quiet spell of ``--settle`` seconds it reads the final
leaderboard over the REST API and counts the clients whose last ``leaderboard_update`` shows
exactly those standings, until all do or ``--settle-max`` seconds have passed. It writes a JSON summary (``--out``) and
the raw samples beside it (``<out>.npz``: arrival time, latency, event) for the benchmark.
It also measures its own event-loop lag: if the clients' loop falls behind, the latencies
measure the clients, not the server, and the summary says so.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import struct
import sys
import time
import zlib
from array import array
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import socketio

from loadtests import config

EVENTS = ("leaderboard_update", "score_update", "question_claimed", "competition_state", "job_update",
          "time_update")
log = logging.getLogger("spectators")


def percentiles(values: Any, points: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
    if len(values) == 0:
        return {f"p{p:g}": None for p in points} | {"max": None}
    arr = np.asarray(values, dtype=np.float64)
    out: dict[str, float | None] = {f"p{p:g}": round(float(np.percentile(arr, p)), 1) for p in points}
    out["max"] = round(float(arr.max()), 1)
    return out


class Tally:
    def __init__(self) -> None:
        self.arrival = array("d")
        self.latency = array("f")
        self.event = array("b")
        self.counts: Counter[str] = Counter()
        self.snapshots = 0
        self.seq_regressions = 0  # seq not above the last event of any kind
        self.seq_regressions_same_event = 0  # seq not above the last event of the same kind
        self.last_event_at = time.monotonic()
        self.listening = False
        self.connected = 0
        self.connect_failures = 0
        self.connect_retries = 0
        self.connect_errors: Counter[str] = Counter()
        self.disconnects = 0
        self.lag = array("f")
        self._at: dict[str, float] = {}

    def commit_time(self, at: str) -> float:
        cached = self._at.get(at)
        if cached is None:
            if len(self._at) > 10000:
                self._at.clear()
            cached = self._at[at] = datetime.fromisoformat(at).timestamp()
        return cached


class SeqWatch:
    """One client's ``seq`` order: counts numbers that do not go up, overall and per event."""

    def __init__(self) -> None:
        self.last = 0
        self.last_by_event: dict[str, int] = {}

    def see(self, event: str, seq: int, tally: Tally) -> None:
        if seq <= self.last:
            tally.seq_regressions += 1
        if seq <= self.last_by_event.get(event, 0):
            tally.seq_regressions_same_event += 1
        self.last = max(self.last, seq)
        self.last_by_event[event] = max(self.last_by_event.get(event, 0), seq)


class Spectator:
    def __init__(self, tally: Tally, http: aiohttp.ClientSession) -> None:
        self.tally = tally
        self.sio = socketio.AsyncClient(reconnection=True, reconnection_attempts=3, handle_sigint=False,
                                        http_session=http, request_timeout=30)
        self.sio.on("*", self.on_event)
        self.sio.on("disconnect", self.on_disconnect)
        self.closing = False
        self.seqs = SeqWatch()
        self.leaderboard: list[dict[str, Any]] | None = None

    @property
    def connected(self) -> bool:
        return bool(self.sio.connected)

    async def disconnect(self) -> None:
        self.closing = True
        await self.sio.disconnect()

    def on_disconnect(self, *_: Any) -> None:
        if not self.closing:
            self.tally.disconnects += 1

    def on_event(self, event: str, data: Any) -> None:
        now = time.time()
        tally = self.tally
        tally.counts[event] += 1
        tally.last_event_at = time.monotonic()
        if not isinstance(data, dict):
            return
        seq = data.get("seq")
        if isinstance(seq, int):
            self.seqs.see(event, seq, tally)
        if event == "leaderboard_update":
            self.leaderboard = data.get("leaderboard")
            if not data.get("changes"):
                tally.snapshots += 1
                return
        at = data.get("oldestAt") or data.get("at")
        if isinstance(at, str):
            tally.arrival.append(now)
            tally.latency.append((now - tally.commit_time(at)) * 1000)
            tally.event.append(EVENTS.index(event) if event in EVENTS else -1)

    async def connect(self, url: str, slug: str, token: str | None) -> bool:
        auth: dict[str, str] = {"competition": slug}
        if token:
            auth["token"] = token
        for attempt in range(3):
            try:
                await self.sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=30)
                return True
            except (TimeoutError, socketio.exceptions.ConnectionError, aiohttp.ClientError) as exc:
                self.tally.connect_retries += 1
                self.tally.connect_errors[repr(exc)[:200]] += 1
                await asyncio.sleep(0.5 * (attempt + 1))
        return False


class RawSpectator:
    """The same listener speaking Engine.IO 4 / Socket.IO 5 itself over one aiohttp websocket.

    python-socketio's client decodes every packet fully and costs about ten times as much CPU
    per event; with thousands of clients on this machine it falls behind and its own backlog
    swamps the server's latency. This one reads only the event name, ``seq`` and ``at`` of each
    message and keeps the last ``leaderboard_update`` raw, to decode once at the end.
    """

    def __init__(self, tally: Tally, http: aiohttp.ClientSession) -> None:
        self.tally = tally
        self.http = http
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.closing = False
        self.seqs = SeqWatch()
        self.last_leaderboard: str | None = None

    @property
    def leaderboard(self) -> list[dict[str, Any]] | None:
        if self.last_leaderboard is None:
            return None
        return json.loads(self.last_leaderboard[2:])[1].get("leaderboard")

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    async def connect(self, url: str, slug: str, token: str | None) -> bool:
        auth: dict[str, str] = {"competition": slug}
        if token:
            auth["token"] = token
        ws_url = "ws" + url.removeprefix("http").rstrip("/") + "/socket.io/?EIO=4&transport=websocket"
        for attempt in range(3):
            ws = None
            try:
                ws = await self.http.ws_connect(ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=5), max_msg_size=0)
                opened = await ws.receive(timeout=30)
                if opened.type != aiohttp.WSMsgType.TEXT or not opened.data.startswith("0"):
                    raise ConnectionError(f"no Engine.IO open packet: {str(opened.data)[:100]}")
                await ws.send_str("40" + json.dumps(auth))
                while True:
                    reply = await ws.receive(timeout=30)
                    if reply.type != aiohttp.WSMsgType.TEXT:
                        raise ConnectionError(f"connection closed during the handshake ({reply.type})")
                    if reply.data == "2":
                        await ws.send_str("3")
                    elif reply.data.startswith("40"):
                        break
                    elif reply.data.startswith("44"):
                        raise ConnectionError(f"refused: {reply.data[2:200]}")
                self.ws = ws
                self.reader = asyncio.create_task(self.read(ws))
                return True
            except (TimeoutError, ConnectionError, aiohttp.ClientError) as exc:
                if ws is not None:
                    await ws.close()
                self.tally.connect_retries += 1
                self.tally.connect_errors[repr(exc)[:200]] += 1
                await asyncio.sleep(0.5 * (attempt + 1))
        return False

    async def read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = message.data
            if data == "2":
                await ws.send_str("3")
            elif data.startswith("42"):
                self.on_message(data)
        if not self.closing:
            self.tally.disconnects += 1

    def on_message(self, data: str) -> None:
        now = time.time()
        tally = self.tally
        end = data.find('"', 4)
        event = data[4:end]
        tally.counts[event] += 1
        tally.last_event_at = time.monotonic()
        at_pos = data.find('"seq":')
        if at_pos > 0:
            stop = at_pos + 6
            while stop < len(data) and data[stop] not in ",}":
                stop += 1
            seq = int(data[at_pos + 6:stop])
            self.seqs.see(event, seq, tally)
        if event == "leaderboard_update":
            self.last_leaderboard = data
            if '"changes":[]' in data or '"changes": []' in data:
                tally.snapshots += 1
                return
        # The oldest change's commit time where the event has one (coalesced broadcasts).
        at_pos = data.find('"oldestAt":"')
        start = at_pos + 12
        if at_pos < 0:
            at_pos = data.find('"at":"')
            start = at_pos + 6
        if at_pos > 0:
            at = data[start:data.find('"', start)]
            tally.arrival.append(now)
            tally.latency.append((now - tally.commit_time(at)) * 1000)
            tally.event.append(EVENTS.index(event) if event in EVENTS else -1)

    async def disconnect(self) -> None:
        self.closing = True
        if self.ws is not None:
            await self.ws.close()


class _FrameProtocol(asyncio.Protocol):
    """One websocket, parsed by hand: an HTTP upgrade, then RFC 6455 frames (permessage-deflate
    offered, as browsers do)."""

    def __init__(self, owner: FrameSpectator, request: bytes) -> None:
        self.owner = owner
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.inflater: Any = None
        self.messages: asyncio.Queue[str | None] = asyncio.Queue()  # the handshake's only
        self.handshaking = True
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.messages.put_nowait(None)
        self.owner.lost()

    def send_text(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        n = len(payload)
        header = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(header + mask + masked)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1")
            del buffer[:end + 4]
            if not head.startswith("HTTP/1.1 101"):
                self.messages.put_nowait(None)
                return
            self.upgraded = True
            if "permessage-deflate" in head.lower():
                self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        offset, size = 0, len(buffer)
        while size - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            length, start = second & 0x7F, offset + 2
            if length == 126:
                if size - offset < 4:
                    break
                length, start = int.from_bytes(buffer[offset + 2:offset + 4], "big"), offset + 4
            elif length == 127:
                if size - offset < 10:
                    break
                length, start = int.from_bytes(buffer[offset + 2:offset + 10], "big"), offset + 10
            if size - start < length:
                break
            payload = bytes(buffer[start:start + length])
            offset = start + length
            opcode = first & 0x0F
            if opcode == 0x1:
                if first & 0x40 and self.inflater is not None:
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
                self.message(payload.decode())
            elif opcode == 0x8:
                if self.transport is not None:
                    self.transport.close()
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(b"\x8a\x80" + os.urandom(4))  # pong, empty and masked
        del buffer[:offset]

    def message(self, text: str) -> None:
        if text == "2":
            self.send_text("3")
        elif self.handshaking:
            self.messages.put_nowait(text)
        elif text.startswith("42"):
            self.owner.on_message(text)


class FrameSpectator(RawSpectator):
    """The raw listener on an asyncio protocol of its own, with no per-message task or queue:
    aiohttp's websocket wakes a task for every message, which on this machine made the
    spectators' own event loop, not the server, the source of most of the measured lag."""

    def __init__(self, tally: Tally, http: aiohttp.ClientSession) -> None:
        super().__init__(tally, http)
        self.protocol: _FrameProtocol | None = None

    @property
    def connected(self) -> bool:
        return self.protocol is not None and not self.protocol.closed.done()

    def lost(self) -> None:
        if self.protocol is not None and not self.protocol.handshaking and not self.closing:
            self.tally.disconnects += 1

    async def connect(self, url: str, slug: str, token: str | None) -> bool:
        auth: dict[str, str] = {"competition": slug}
        if token:
            auth["token"] = token
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n").encode()
        loop = asyncio.get_running_loop()
        for attempt in range(3):
            protocol = None
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(lambda: _FrameProtocol(self, request), host, port), 30)
                opened = await asyncio.wait_for(protocol.messages.get(), 30)
                if opened is None or not opened.startswith("0"):
                    raise ConnectionError(f"no Engine.IO open packet: {str(opened)[:100]}")
                protocol.send_text("40" + json.dumps(auth))
                while True:
                    reply = await asyncio.wait_for(protocol.messages.get(), 30)
                    if reply is not None and reply.startswith("42"):
                        # The connect-time snapshot may come before the connect's acknowledgement.
                        self.on_message(reply)
                        continue
                    if reply is None or not reply.startswith("40"):
                        raise ConnectionError(f"refused: {str(reply)[:200]}")
                    break
                protocol.handshaking = False
                self.protocol = protocol
                return True
            except (TimeoutError, ConnectionError, OSError) as exc:
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.close()
                self.tally.connect_retries += 1
                self.tally.connect_errors[repr(exc)[:200]] += 1
                await asyncio.sleep(0.5 * (attempt + 1))
        return False

    async def disconnect(self) -> None:
        self.closing = True
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.protocol.closed), 5)


async def watch_lag(tally: Tally, stop: asyncio.Event) -> None:
    period = 0.1
    while not stop.is_set():
        started = time.monotonic()
        await asyncio.sleep(period)
        if tally.listening:
            tally.lag.append((time.monotonic() - started - period) * 1000)


async def final_leaderboard(api: str, slug: str, limit: int) -> list[dict[str, Any]] | None:
    async with aiohttp.ClientSession() as http, http.get(
        f"{api.rstrip('/')}/api/v1/competitions/{slug}/leaderboard", params={"limit": str(limit)},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as resp:
        if resp.status != 200:
            return None
        body = await resp.json()
        return body["leaderboard"]


def same_standings(a: list[dict[str, Any]] | None, b: list[dict[str, Any]]) -> bool:
    if a is None:
        return False
    key = [(r.get("rank"), r.get("teamName"), r.get("points")) for r in a]
    return key == [(r.get("rank"), r.get("teamName"), r.get("points")) for r in b]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    http = aiohttp.ClientSession(connector=connector)
    kind = {"raw": RawSpectator, "frames": FrameSpectator}.get(args.client, Spectator)
    spectators: list[Any] = [kind(tally, http) for _ in range(args.clients)]
    lag_task = asyncio.create_task(watch_lag(tally, stop))
    started = time.time()

    async def join(i: int, s: Spectator | RawSpectator) -> None:
        token = config.admin_token() if i < args.organisers else None
        if await s.connect(args.url, args.slug, token):
            tally.connected += 1
        else:
            tally.connect_failures += 1

    joins = []
    for i, s in enumerate(spectators):
        if stop.is_set():
            break
        joins.append(asyncio.create_task(join(i, s)))
        await asyncio.sleep(1 / args.rate)
    await asyncio.gather(*joins)
    connect_seconds = time.time() - started
    log.info("%d connected, %d failed in %.1f s", tally.connected, tally.connect_failures, connect_seconds)
    if args.ready_file:
        args.ready_file.write_text(json.dumps({"connected": tally.connected, "failed": tally.connect_failures,
                                               "retries": tally.connect_retries, "seconds": round(connect_seconds, 1)}))
    listen_from = time.time()
    tally.listening = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, args.duration - (listen_from - started)))
    stop.set()
    listen_to = time.time()
    # Let the clients drain what is still on its way, then compare what each shows with the final
    # standings: once no event came for --settle seconds, and again after each later quiet spell,
    # until every client shows them or --settle-max has passed.
    size = max((len(s.leaderboard or []) for s in spectators), default=10) or 10
    final: list[dict[str, Any]] | None = None
    on_final = 0
    checked_at = -1.0
    while True:
        elapsed = time.time() - listen_to
        quiet = time.monotonic() - tally.last_event_at >= args.settle
        if (quiet and tally.last_event_at != checked_at) or elapsed >= args.settle_max:
            checked_at = tally.last_event_at
            final = await final_leaderboard(args.api, args.slug, size) if args.api else None
            on_final = sum(1 for s in spectators if final is not None and same_standings(s.leaderboard, final))
            if on_final == len(spectators) or elapsed >= args.settle_max:
                break
        await asyncio.sleep(0.5)
    tally.listening = False
    settled = time.time() - listen_to
    received_any = sum(1 for s in spectators if s.leaderboard is not None)
    await asyncio.wait_for(
        asyncio.gather(*(s.disconnect() for s in spectators if s.connected), return_exceptions=True),
        timeout=30,
    )
    await http.close()
    lag_task.cancel()
    latency = np.frombuffer(tally.latency, dtype=np.float32) if len(tally.latency) else np.zeros(0, np.float32)
    events = np.frombuffer(tally.event, dtype=np.int8) if len(tally.event) else np.zeros(0, np.int8)
    by_event = {
        name: {"count": int((events == i).sum()), **percentiles(latency[events == i])}
        for i, name in enumerate(EVENTS) if (events == i).any()
    }
    summary = {
        "url": args.url,
        "slug": args.slug,
        "clients": args.clients,
        "client": args.client,
        "organisers": args.organisers,
        "connected": tally.connected,
        "connect_failures": tally.connect_failures,
        "connect_retries": tally.connect_retries,
        "connect_errors": dict(tally.connect_errors),
        "connect_seconds": round(connect_seconds, 1),
        "disconnects": tally.disconnects,
        "listen_from": listen_from,
        "listen_to": listen_to,
        "events": dict(tally.counts),
        "snapshots": tally.snapshots,
        "seq_regressions": tally.seq_regressions,
        "seq_regressions_same_event": tally.seq_regressions_same_event,
        "settled_seconds": round(settled, 1),
        "latency_ms": {"all": {"count": len(latency), **percentiles(latency)}, **by_event},
        "loop_lag_ms": percentiles(tally.lag),
        "final_leaderboard": final,
        "clients_on_final_standings": on_final,
        "clients_with_a_leaderboard": received_any,
    }
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
        np.savez_compressed(args.out.with_suffix(".npz"), arrival=np.frombuffer(tally.arrival, dtype=np.float64)
                            if len(tally.arrival) else np.zeros(0), latency=latency, event=events)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8001", help="the realtime server")
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="the API, for the final standings")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--slug")
    where.add_argument("--fixture", type=Path, help="a fixture JSON from loadtests.fixtures")
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--client", choices=("socketio", "raw", "frames"), default="socketio",
                        help="python-socketio's AsyncClient; a minimal protocol client on aiohttp (10x less CPU "
                             "per event); or the same on a bare asyncio protocol (less again, compression offered)")
    parser.add_argument("--organisers", type=int, default=0, help="how many of the clients join as organisers")
    parser.add_argument("--rate", type=float, default=200.0, help="new connections per second")
    parser.add_argument("--duration", type=float, default=300.0, help="stop after this many seconds at most")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="after stopping, wait until no event arrived for this many seconds, then check")
    parser.add_argument("--settle-max", type=float, default=60.0, help="but wait at most this long")
    parser.add_argument("--ready-file", type=Path, help="written once every client has tried to connect")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.fixture:
        args.slug = json.loads(args.fixture.read_text())["slug"]
    if args.duration > 3600:
        parser.error("--duration is at most 3600 s")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("socketio").setLevel(logging.ERROR)
    logging.getLogger("engineio").setLevel(logging.ERROR)
    summary = asyncio.run(run(args))
    lat = summary["latency_ms"]["all"]
    print(f"{summary['connected']}/{summary['clients']} connected, {lat['count']} timed events, "
          f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, {summary['clients_on_final_standings']} on the final standings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
