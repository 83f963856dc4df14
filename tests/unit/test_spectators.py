"""The benchmark's spectators time a coalesced broadcast from its oldest change."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from loadtests.spectators import RawSpectator, Spectator, Tally
from models import events


def test_both_spectator_kinds_measure_from_oldest_at() -> None:
    now = datetime.now(UTC)
    change = events.ScoreChange(team_name="Owls", points=1100, delta=100, reason="correct_answer", rank=1)
    name, data = events.to_wire(events.LeaderboardUpdate(
        competition="demo", seq=5, at=events.iso(now - timedelta(seconds=1)),
        oldest_at=events.iso(now - timedelta(seconds=10)),
        leaderboard=[events.Standing(rank=1, team_name="Owls", points=1100)], changes=[change]))
    raw_tally, tally = Tally(), Tally()
    # The frame python-socketio sends: compact JSON after "42".
    RawSpectator(raw_tally, None).on_message("42" + json.dumps([name, data], separators=(",", ":")))  # type: ignore[arg-type]
    Spectator(tally, None).on_event(name, data)  # type: ignore[arg-type]
    for t in (raw_tally, tally):
        assert len(t.latency) == 1
        assert 9_500 < t.latency[0] < 12_000, t.latency[0]  # from oldestAt (10 s ago), not at (1 s ago)
