"""The event contract: its generated document, and what it accepts and refuses."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from models import events
from realtime.app import LRU, _runs

AT = "2026-11-27T18:55:59.123456Z"


def test_the_events_document_is_current() -> None:
    assert events.DOC_PATH.exists(), "run: python -m models.events --write"
    assert events.DOC_PATH.read_text() == events.render_document(), "run: python -m models.events --write"
    assert events.main(["--check"]) == 0


def test_the_document_lists_every_event_and_message_with_its_fields() -> None:
    text = events.render_document()
    for name, cls in events.EVENTS.items():
        assert f"### `{name}`" in text
        for f in msgspec.structs.fields(cls):
            assert f"`{f.encode_name}`" in text, (name, f.encode_name)
    for cls in events.MESSAGES:
        assert f"### `{cls.__struct_config__.tag}`" in text
    assert set(events.EVENTS) == {"leaderboard_update", "score_update", "question_claimed", "question_released",
                                  "competition_state", "job_update", "time_update"}


def _score(**fields: Any) -> events.ScoreUpdate:
    return events.ScoreUpdate(competition="demo", at=AT, team_name="Owls", points=1100, delta=100,
                              reason="correct_answer", rank=1, **fields)


def test_payloads_keep_their_documented_camel_case_shape_without_a_tag() -> None:
    name, data = events.to_wire(_score(seq=7))
    assert name == "score_update"
    assert data == {"competition": "demo", "at": AT, "seq": 7, "teamName": "Owls", "points": 1100, "delta": 100,
                    "reason": "correct_answer", "rank": 1}
    assert events.from_wire(name, data) == _score(seq=7)


def test_a_payload_off_the_contract_is_refused() -> None:
    _, good = events.to_wire(_score(seq=1))
    bad: list[tuple[str, Any, str]] = [
        ("score_update", {**good, "extra": 1}, "unknown field `extra`"),
        ("score_update", {k: v for k, v in good.items() if k != "rank"}, "missing required field `rank`"),
        ("score_update", {**good, "at": "yesterday"}, "$.at"),
        ("score_update", {**good, "at": "2026-11-27T18:55:59Z"}, "$.at"),  # no microseconds
        ("score_update", {**good, "points": "1100"}, "$.points"),
        ("leaderboard_update", good, "unknown field `teamName`"),
        ("no_such_event", good, "unknown event"),
        ("score_update", [good], "must be an object"),
        ("competition_state", {"competition": "demo", "at": AT, "seq": 1, "state": "exploded"}, "$.state"),
    ]
    for name, data, message in bad:
        with pytest.raises(msgspec.ValidationError, match=message.replace("$", r"\$")):
            events.from_wire(name, data)


def test_job_views_leave_out_a_missing_result_or_error_like_the_rest_api() -> None:
    job = SimpleNamespace(id="5f0c", kind="claim", status="failed", created_at=datetime(2026, 1, 1, tzinfo=UTC),
                          finished_at=None, result=None, error={"code": "question_not_found", "message": "no Q9"})
    view = events.job_view(job)
    assert view == {"jobId": "5f0c", "kind": "claim", "status": "failed", "createdAt": "2026-01-01T00:00:00.000000Z",
                    "finishedAt": None, "links": {"job": "/api/v1/jobs/5f0c"},
                    "error": {"code": "question_not_found", "message": "no Q9"}}
    name, data = events.to_wire(events.JobUpdate(competition="demo", at=AT, **events.job_fields(job)))
    assert name == "job_update"
    assert {k: v for k, v in data.items() if k not in ("competition", "at", "seq")} == view


def test_redis_messages_round_trip_and_are_told_apart_by_type() -> None:
    news = events.News(competition="demo", competition_id=3, at=AT,
                       claims=[events.Claim(question_id="Q1", team_name="Owls")])
    settings = events.CompetitionSettings(competition="demo", competition_id=3, at=AT, state="running",
                                          leaderboard_size=10, freeze_at=None)
    assert events.decode_change(events.encode(news)) == news
    assert events.decode_change(events.encode(settings)) == settings
    finished = events.JobFinished(job_id="5f0c", status="succeeded")
    assert events.decode_job_finished(events.encode(finished)) == finished
    with pytest.raises(msgspec.ValidationError):
        events.decode_change(events.encode(finished))
    with pytest.raises(msgspec.DecodeError):
        events.decode_job_finished(b"5f0c succeeded")  # the shape this message used to have


def test_claims_and_releases_are_broadcast_in_runs_of_one_kind_in_order() -> None:
    claim = events.Claim(question_id="Q1", team_name="Owls")
    release = events.Release(question_id="Q1", reason="expired")
    again = events.Claim(question_id="Q1", team_name="Bats")
    board: list[tuple[str, events.Claim | events.Release]] = [(AT, claim), (AT, claim), (AT, release), (AT, again)]
    assert [[item for _, item in run] for run in _runs(board)] == [[claim, claim], [release], [again]]
    assert _runs([]) == []


def test_the_lru_forgets_the_least_recently_used() -> None:
    cache: LRU[str, int] = LRU(3)
    for i, key in enumerate("abcd"):
        cache.put(key, i)
    assert len(cache) == 3 and "a" not in cache
    assert cache.get("b") == 1  # now the most recent
    cache.put("e", 4)
    assert "c" not in cache and "b" in cache


def test_a_request_id_is_sent_when_there_is_one_and_left_out_otherwise() -> None:
    _, data = events.to_wire(_score(seq=3, request_id="venue-0042"))
    assert data["requestId"] == "venue-0042"
    assert events.from_wire("score_update", data) == _score(seq=3, request_id="venue-0042")
    assert "requestId" not in events.to_wire(_score(seq=3))[1]
