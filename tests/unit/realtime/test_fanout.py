"""The frames a public broadcast is written with: built once, right for every client."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

from models import events
from realtime.fanout import COMPRESS_ABOVE, Frames, socketio_text


def parse_frame(data: bytes) -> tuple[int, bool, bytes, bytes]:
    """(opcode, compressed, payload, rest) of one unmasked server frame, per RFC 6455 5.2."""
    first, second = data[0], data[1]
    assert first & 0x80, "FIN must be set"
    assert not second & 0x80, "a server must not mask"
    length, offset = second & 0x7F, 2
    if length == 126:
        (length,), offset = struct.unpack("!H", data[2:4]), 4
    elif length == 127:
        (length,), offset = struct.unpack("!Q", data[2:10]), 10
    return first & 0x0F, bool(first & 0x40), data[offset:offset + length], data[offset + length:]


@pytest.mark.parametrize("size", [10, 125, 126, 65535, 65536, 200_000])
def test_a_plain_frame_carries_the_text_with_the_right_length_encoding(size: int) -> None:
    text = "4" + "x" * (size - 1)
    opcode, compressed, payload, rest = parse_frame(Frames(text).plain)
    assert (opcode, compressed, rest) == (0x1, False, b"")
    assert payload.decode() == text


def _inflate(decompressor: zlib._Decompress, payload: bytes) -> str:
    return decompressor.decompress(payload + b"\x00\x00\xff\xff").decode()


def test_one_compressed_frame_decodes_on_any_client_whatever_it_received_before() -> None:
    rows = [{"teamName": f"Team {i}", "points": i} for i in range(200)]
    text = "42" + json.dumps(["leaderboard_update", {"rows": rows}])
    frame = Frames(text).deflated(15)
    assert len(frame) < len(text) / 3
    # Two clients whose decompressors (context kept, as browsers keep it) have seen different
    # messages from their own connections' writers; both decode the shared frame.
    for history in ("42[\"job_update\",{\"status\":\"succeeded\"}]", "42" + "z" * 5000):
        writer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        earlier = (writer.compress(history.encode()) + writer.flush(zlib.Z_SYNC_FLUSH))[:-4]
        client = zlib.decompressobj(-15)
        assert _inflate(client, earlier) == history
        opcode, compressed, payload, rest = parse_frame(frame)
        assert (opcode, compressed, rest) == (0x1, True, b"")
        assert _inflate(client, payload) == text
        assert _inflate(client, payload) == text


def test_small_messages_and_tiny_windows_go_uncompressed() -> None:
    small = Frames("42" + "a" * (COMPRESS_ABOVE // 2))
    assert small.frame(15) == small.plain
    big = Frames("42" + "a" * (COMPRESS_ABOVE * 4))
    assert big.frame(0) == big.plain
    assert big.frame(8) == big.plain  # zlib has no raw 8-bit window; RSV1 clear is always allowed
    assert big.frame(15) == big.deflated(15) != big.plain
    assert parse_frame(big.frame(9))[1]


def test_the_packet_is_a_socketio_event_that_decodes_to_the_contracts_type() -> None:
    update = events.LeaderboardUpdate(
        competition="demo", seq=7, at="2026-12-02T10:00:00.000000Z", oldest_at="2026-12-02T09:59:59.900000Z",
        leaderboard=[events.Standing(rank=1, team_name="Ünïcode ✓", points=30)], changes=[],
    )
    text = socketio_text(update)
    assert text.startswith('42["leaderboard_update",')
    name, data = json.loads(text[2:])
    assert events.from_wire(name, data) == update
    frames = Frames(text)
    # The long-polling and fallback path sends the same Socket.IO packet (Engine.IO type 4).
    assert frames.packet.encode() == text
