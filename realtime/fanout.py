"""Public broadcasts written once and copied to every client's socket.

python-socketio encodes a room broadcast once, but then hands it to each client's own queue and
writer greenlet, which frames it, and possibly compresses it, again for that client: about
65 µs of CPU per client and event, so a broadcast to 2,000 clients took a busy machine the best
part of a second (the fan-out benchmark). Here the Socket.IO packet, its WebSocket frame and
its compressed frame are built once per broadcast, and each client whose websocket is idle gets
the bytes with one non-blocking ``send``: a few microseconds each.

What keeps a client's stream whole and in order:

- A frame goes straight to the socket only when the client's own writer has nothing queued and
  is not in the middle of a write (its send lock is free). In eventlet nothing else runs between
  that check and the ``send``, so no frame of the client's writer can be cut into or overtaken.
  Otherwise the packet joins the client's queue, behind what is already there, the usual way.
- If the kernel takes only part of a frame (a slow client's buffer is full), the rest is sent by
  a green thread that holds the client's send lock until it is out, so the writer waits for it.
- Compressed frames are only valid because every connection is negotiated with
  ``server_no_context_takeover`` (RFC 7692 lets the server add it to any offer): each message is
  compressed on its own, so one compressed frame is right for every client, and the writer's own
  frames never refer back to bytes a client got from here.

Long-polling clients, and any server not running on eventlet, take the usual path.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterable
from typing import Any

import msgspec
from engineio import packet as eio_packet

from models import events

log = logging.getLogger("realtime")

_ENCODE = msgspec.json.Encoder()
# Compressed frames are worth their CPU only past this size (engine.io's own default threshold).
COMPRESS_ABOVE = 1024


def _header(opcode_byte: int, length: int) -> bytes:
    if length < 126:
        return struct.pack("!BB", opcode_byte, length)
    if length < 1 << 16:
        return struct.pack("!BBH", opcode_byte, 126, length)
    return struct.pack("!BBQ", opcode_byte, 127, length)


class Frames:
    """One Engine.IO message ready for the wire: its text, its WebSocket frame, its compressed frames."""

    __slots__ = ("_deflated", "packet", "plain", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        payload = text.encode()
        # FIN + text opcode; server frames are never masked.
        self.plain = _header(0x81, len(payload)) + payload
        self.packet = eio_packet.Packet(eio_packet.MESSAGE, text[1:])
        self._deflated: dict[int, bytes] = {}

    def deflated(self, window_bits: int) -> bytes:
        """The frame compressed on its own (no context), with ``window_bits`` as negotiated."""
        frame = self._deflated.get(window_bits)
        if frame is None:
            compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits)
            body = compressor.compress(self.text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
            body = body[:-4]  # RFC 7692 7.2.1: the empty block's tail is left off
            # FIN + RSV1 (compressed) + text opcode.
            frame = self._deflated[window_bits] = _header(0xC1, len(body)) + body
        return frame

    def frame(self, window_bits: int) -> bytes:
        """The frame for a connection with these window bits (0: not compressed)."""
        # zlib has no raw 8-bit window; a message may always go uncompressed (RSV1 clear).
        if window_bits < 9 or len(self.plain) <= COMPRESS_ABOVE:
            return self.plain
        return self.deflated(window_bits)


def window_bits(ws: Any) -> int:
    """The negotiated server window of a compressed connection; 0 if it is not compressed."""
    options = ws.extensions.get("permessage-deflate") if ws.extensions else None
    if options is None:
        return 0
    return int(options.get("server_max_window_bits") or zlib.MAX_WBITS)


def socketio_text(event: events.Event) -> str:
    """The Engine.IO text of a Socket.IO EVENT on the default namespace: ``42["name",{...}]``."""
    name, data = events.to_wire(event)
    return "42" + _ENCODE.encode([name, data]).decode()


def tracked_websocket_class(base: type) -> type:
    """eventlet's WebSocket WSGI app, remembering each connection's websocket on its Engine.IO
    socket, and negotiating compression without server context takeover."""

    class TrackedWebSocketWSGI(base):  # type: ignore[misc, valid-type]
        def __init__(self, handler: Any, server: Any) -> None:
            socket = getattr(handler, "__self__", None)

            def tracked(ws: Any) -> Any:
                if socket is not None:
                    socket.quiz_ws = ws
                try:
                    return handler(ws)
                finally:
                    if socket is not None:
                        socket.quiz_ws = None

            super().__init__(tracked, server)

        def _negotiate_permessage_deflate(self, extensions: Any) -> Any:
            config = super()._negotiate_permessage_deflate(extensions)
            if config is not None:
                config["server_no_context_takeover"] = True
            return config

    return TrackedWebSocketWSGI


def install(sio: Any) -> bool:
    """Route this server's websockets through ``tracked_websocket_class``; False where it cannot
    (not eventlet), and broadcasts then take python-socketio's path."""
    if sio.async_mode != "eventlet":
        return False
    base = sio.eio._async.get("websocket")
    if base is None:
        return False
    sio.eio._async = {**sio.eio._async, "websocket": tracked_websocket_class(base)}
    return True


class Broadcaster:
    """Sends events to the local clients of some rooms, each encoded and framed once."""

    def __init__(self, sio: Any, spawn: Any, direct: bool) -> None:
        self.sio = sio
        self.spawn = spawn
        self.direct = direct
        self.direct_sends = 0
        self.queued_sends = 0

    def send(self, batch: list[tuple[events.Event, list[str]]]) -> dict[str, int]:
        """Deliver each event to everyone in its rooms, in order; how many clients each reached.

        A client in the rooms of several events gets their frames in one write.
        """
        rooms = self.sio.manager.rooms.get("/", {})
        frames = [Frames(socketio_text(event)) for event, _ in batch]
        reached: dict[str, int] = {}
        # Clients grouped by which of the events they get (usually: all of them).
        targets: dict[str, list[int]] = {}
        for index, (event, names) in enumerate(batch):
            sids = self._participants(rooms, names)
            reached[event.__struct_config__.tag] = reached.get(event.__struct_config__.tag, 0) + len(sids)
            for eio_sid in sids:
                targets.setdefault(eio_sid, []).append(index)
        groups: dict[tuple[int, ...], list[str]] = {}
        for eio_sid, indexes in targets.items():
            groups.setdefault(tuple(indexes), []).append(eio_sid)
        sockets = self.sio.eio.sockets
        for indexes, sids in groups.items():
            chosen = [frames[i] for i in indexes]
            self._deliver(sockets, sids, chosen)
        return reached

    @staticmethod
    def _participants(rooms: dict[str, Any], names: Iterable[str]) -> set[str]:
        sids: set[str] = set()
        for name in names:
            room = rooms.get(name)
            if room:
                sids.update(room.values())
        return sids

    def _deliver(self, sockets: dict[str, Any], sids: list[str], frames: list[Frames]) -> None:
        blobs: dict[int, bytes] = {}
        for eio_sid in sids:
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed:
                continue
            ws = getattr(socket, "quiz_ws", None) if self.direct else None
            if ws is None or not socket.upgraded or not socket.queue.empty() or ws._sendlock.locked():
                self.queued_sends += 1
                for frame in frames:
                    socket.send(frame.packet)
                continue
            bits = window_bits(ws)
            blob = blobs.get(bits)
            if blob is None:
                blob = blobs[bits] = b"".join(frame.frame(bits) for frame in frames)
            self.direct_sends += 1
            self._write(ws, blob)

    def _write(self, ws: Any, blob: bytes) -> None:
        try:
            sent = ws.socket.fd.send(blob)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The client is gone; its reader notices and closes the connection.
            return
        if sent < len(blob):
            # Held until the rest is out, so the client's writer cannot put a frame inside this one.
            ws._sendlock.acquire()
            self.spawn(self._finish, ws, memoryview(blob)[sent:])

    @staticmethod
    def _finish(ws: Any, rest: memoryview) -> None:
        try:
            ws.socket.sendall(rest)
        except OSError:
            pass
        finally:
            ws._sendlock.release()
