"""The bytes a broadcast puts on a websocket, read by a client that offers compression as browsers do.

Public broadcasts are framed once and copied to every socket (realtime/fanout.py); this reads
those frames with a hand-written RFC 6455 client, so nothing between the server and the test
could hide a wrong length, a frame cut in two, or a compressed frame that only decodes on a
fresh connection.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import zlib
from typing import Any
from urllib.parse import urlsplit

from models import events
from tests.support import Api, Db, Listener, answer_of, questions, register_teams


class RawClient:
    """Engine.IO 4 / Socket.IO 5 over a websocket, every frame parsed here."""

    def __init__(self, url: str, auth: dict[str, str], deflate: bool) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=15)
        key = base64.b64encode(os.urandom(16)).decode()
        offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
        self.sock.sendall((
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{offer}\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101"), lines[0]
        self.headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        # One decompressor for the connection, keeping its window from message to message, as
        # browsers do unless the server says otherwise.
        self.inflater = zlib.decompressobj(-15)
        self.compressed_frames = 0
        self.events: list[tuple[str, dict[str, Any]]] = []
        opened = self._message()
        assert opened.startswith("0"), opened
        self._send("40" + json.dumps(auth))

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _message(self) -> str:
        first, second = self._read(2)
        assert first & 0x80, "fragmented messages are not expected"
        assert not second & 0x80, "server frames are never masked"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        payload = self._read(length)
        assert first & 0x0F == 0x1, f"opcode {first & 0x0F}"
        if first & 0x40:
            self.compressed_frames += 1
            return self.inflater.decompress(payload + b"\x00\x00\xff\xff").decode()
        return payload.decode()

    def _send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        header = struct.pack("!BB", 0x81, 0x80 | len(payload)) if len(payload) < 126 else \
            struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def wait_event(self, name: str, match: Any = lambda _: True, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self._message()
            if message == "2":
                self._send("3")
            elif message.startswith("42"):
                event, data = json.loads(message[2:])
                events.from_wire(event, data)  # exactly the contract's type
                self.events.append((event, data))
                if event == name and match(data):
                    return data
            elif message.startswith("44"):
                raise AssertionError(f"refused: {message}")
        raise AssertionError(f"no {name} in {timeout} s; got {[n for n, _ in self.events]}")

    def close(self) -> None:
        self.sock.close()


def test_compressed_and_plain_clients_get_the_same_broadcasts(api: Api, db: Db, stack: Any) -> None:
    slug = api.create_competition(leaderboardSize=50)["slug"]
    # Long names, so the leaderboard is well past the size from which frames are compressed.
    teams = register_teams(api, db, slug, [f"A team with a long name for the wire test {i:02d}" for i in range(40)])
    api.add_questions(slug, questions(3, prefix="W"))
    auth = {"competition": slug}
    deflating = RawClient(stack.realtime_url, auth, deflate=True)
    plain = RawClient(stack.realtime_url, auth, deflate=False)
    reference = Listener(stack.realtime_url, auth).connect()
    try:
        extensions = deflating.headers.get("sec-websocket-extensions", "")
        assert "permessage-deflate" in extensions and "server_no_context_takeover" in extensions, extensions
        assert "sec-websocket-extensions" not in plain.headers
        for client in (deflating, plain):
            client.wait_event("leaderboard_update")
        # Three rounds: each broadcast must decode on a connection that already inflated others.
        for round_, code in enumerate(("W1", "W2", "W3"), start=1):
            team = teams[round_]
            api.claim(slug, team.token, code)
            api.submit(slug, team.token, code, answer_of(code))

            def scored(data: dict[str, Any], name: str = team.name) -> bool:
                return any(c["teamName"] == name and c["reason"] == "correct_answer" for c in data["changes"])

            seen = [client.wait_event("leaderboard_update", scored) for client in (deflating, plain)]
            heard = reference.wait_event("leaderboard_update", scored)
            assert seen[0] == seen[1] == heard
            assert len(json.dumps(heard["leaderboard"])) > 2048
        assert deflating.compressed_frames >= 3
        assert plain.compressed_frames == 0
        # Past their connect snapshots, all three heard the same events in the same order.
        streams = [[(n, d["seq"]) for n, d in c.events[1:]] for c in (deflating, plain)]
        assert streams[0] == streams[1][: len(streams[0])] or streams[1] == streams[0][: len(streams[1])]
        heard_all = [(n, d["seq"]) for n, d in reference.events[1:]]
        assert streams[0] == heard_all[: len(streams[0])]
        for client in (deflating, plain):
            seqs = [d["seq"] for _, d in client.events]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert [n for n, _ in client.events].count("question_claimed") >= 3
    finally:
        deflating.close()
        plain.close()
        reference.close()
    reference.assert_valid()
