"""The event contract: every Socket.IO event and every message between processes on Redis.

Workers, the API and the realtime servers all build and read their messages with these
Structs, so a payload has one definition. Two tagged unions:

- ``ClientEvent``: what Socket.IO clients receive. The tag is the event name; it travels as the
  Socket.IO event name, not inside the payload (``to_wire``/``from_wire``), so payloads keep
  their documented camelCase shapes.
- ``ChangeMessage``: the ``changes`` channel that workers and the API publish and every realtime
  server's coalescer reads (``type`` tells the kinds apart). The ``jobs`` channel, read by the
  API's ``Prefer: wait`` waiter, carries ``JobFinished``.

``docs/events.md`` is generated from this module: ``python -m models.events --write``.
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import msgspec
from msgspec import Meta, Struct

# Always UTC with microseconds and a Z, so two stamps also compare as strings.
Iso = Annotated[str, Meta(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$",
                          description="ISO 8601 in UTC with microseconds, e.g. 2026-11-27T18:55:59.123456Z")]
CompetitionStateName = Literal["draft", "open", "running", "paused", "finished"]
JobStatus = Literal["queued", "running", "succeeded", "failed"]
ReleaseReason = Literal["expired", "disqualified", "organiser"]


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


RequestId = Annotated[str | None, Meta(description="the `X-Request-ID` of the write that caused it; left out when "
                                                 "there is none (a sweeper's job)")]


# -- parts shared by several events -------------------------------------------------------------


class _Part(Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    pass


class Standing(_Part):
    """One row of a leaderboard."""

    rank: int
    team_name: str
    points: int


class ScoreChange(_Part):
    """One change of a team's points, with its points and rank right after it."""

    team_name: str
    points: int
    delta: int
    reason: str
    rank: int | None


class Claim(_Part):
    question_id: str
    team_name: str


class Release(_Part):
    question_id: str
    reason: ReleaseReason


class JobLinks(_Part):
    job: str


class JobError(_Part):
    code: str
    message: str


# -- Socket.IO events ---------------------------------------------------------------------------


class Event(_Part, tag_field="event"):
    """Every Socket.IO payload carries these."""

    ROOMS: ClassVar[str] = ""

    competition: Annotated[str, Meta(description="the competition's slug")]
    at: Annotated[Iso, Meta(description="the commit time of the (newest) change it reports")]
    # Workers publish 0; the realtime server numbers each event as it delivers it.
    seq: Annotated[int, Meta(description="numbered by the realtime server as it delivers the event: only goes "
                                         "up on a connection, across every event type")] = 0


class LeaderboardUpdate(Event, kw_only=True, tag="leaderboard_update"):
    """The top of the leaderboard. Sent on connect (``changes`` empty: a snapshot), then coalesced
    per competition: at most a few per second, the last always showing the final standings.
    During a freeze spectators get only the snapshot of the standings at the freeze."""

    ROOMS = "competition (spectators, teams), organisers; the connecting client for the snapshot"

    oldest_at: Annotated[Iso, Meta(description="the commit time of the oldest change it contains")]
    leaderboard: list[Standing]
    changes: Annotated[list[ScoreChange], Meta(description="every public change since the last broadcast")]


class ScoreUpdate(Event, kw_only=True, tag="score_update"):
    """A team's own score change, at once (not coalesced)."""

    ROOMS = "the team, organisers"

    team_name: str
    points: int
    delta: int
    reason: str
    rank: int | None
    request_id: RequestId = None


class QuestionClaimed(Event, kw_only=True, tag="question_claimed"):
    """Claims, coalesced like leaderboard updates: the latest claim's fields, and every claim since
    the previous broadcast in ``claims``."""

    ROOMS = "competition, organisers"

    oldest_at: Iso
    question_id: str
    team_name: str
    claims: list[Claim]


class QuestionReleased(Event, kw_only=True, tag="question_released"):
    """Questions back on the board (a claim expired, its team was disqualified, or an organiser
    released it), coalesced like claims: the latest release's fields, and every release since the
    previous broadcast in ``releases``."""

    ROOMS = "competition, organisers"

    oldest_at: Iso
    question_id: str
    reason: ReleaseReason
    releases: list[Release]


class CompetitionState(Event, kw_only=True, tag="competition_state"):
    """The competition moved to another state."""

    ROOMS = "competition, organisers"

    state: CompetitionStateName


class JobUpdate(Event, kw_only=True, tag="job_update"):
    """A job of the team finished; the same fields as ``GET /api/v1/jobs/{jobId}``."""

    ROOMS = "the owner of the job's token"

    job_id: str
    kind: str
    status: JobStatus
    created_at: Iso | None
    finished_at: Iso | None
    links: JobLinks
    result: Annotated[dict[str, Any] | None, Meta(description="left out when the job has none")] = None
    error: Annotated[JobError | None, Meta(description="left out when the job has none")] = None
    request_id: RequestId = None


class TimeUpdate(Event, kw_only=True, tag="time_update"):
    """The team's deadline moved (a correct mystery answer adds time)."""

    ROOMS = "the team"

    deadline: Iso | None
    remaining_seconds: int | None
    request_id: RequestId = None


ClientEvent = Union[  # noqa: UP007 - a runtime union object, for msgspec and the docs
    LeaderboardUpdate, ScoreUpdate, QuestionClaimed, QuestionReleased, CompetitionState, JobUpdate, TimeUpdate,
]
EVENTS: dict[str, type[Event]] = {cls.__struct_config__.tag: cls for cls in typing.get_args(ClientEvent)}  # type: ignore[misc]


def to_wire(event: Event) -> tuple[str, dict[str, Any]]:
    """The Socket.IO event name and its JSON-ready payload (the tag is the name, not a field)."""
    data = msgspec.to_builtins(event)
    # A job's result and error are left out when there are none, as in the REST view; so is a
    # request id, so events of jobs without one keep their earlier shape.
    optional = ("result", "error", "requestId") if isinstance(event, JobUpdate) else ("requestId",)
    for name in optional:
        if name in data and data[name] is None:
            del data[name]
    return data.pop("event"), data


def from_wire(name: str, data: Any) -> Event:
    """Decode and validate a received payload by its event name; ``ValidationError`` if it is not
    exactly what the contract says."""
    if name not in EVENTS:
        raise msgspec.ValidationError(f"unknown event {name!r}")
    if not isinstance(data, dict):
        raise msgspec.ValidationError(f"{name} payload must be an object, got {type(data).__name__}")
    return msgspec.convert({**data, "event": name}, ClientEvent)  # type: ignore[arg-type]


def emit(manager: Any, event: Event, room: str | list[str], **kwargs: Any) -> None:
    """Emit ``event`` through a python-socketio server or client manager."""
    name, data = to_wire(event)
    manager.emit(name, data, room=room, namespace="/", **kwargs)


class JobView(_Part, omit_defaults=True):
    """A job as clients see it over REST (``GET /api/v1/jobs/{jobId}`` and the writes' answers)."""

    job_id: str
    kind: str
    status: JobStatus
    created_at: Iso | None
    finished_at: Iso | None
    links: JobLinks
    result: dict[str, Any] | None = None
    error: JobError | None = None


def job_fields(job: Any) -> dict[str, Any]:
    """The contract's fields of a job row (``Job`` or a row with the same columns)."""
    error = job.error
    return {
        "job_id": str(job.id),
        "kind": job.kind,
        "status": job.status,
        "created_at": iso(job.created_at) if job.created_at else None,
        "finished_at": iso(job.finished_at) if job.finished_at else None,
        "links": JobLinks(job=f"/api/v1/jobs/{job.id}"),
        "result": job.result,
        "error": None if error is None else JobError(code=error["code"], message=error["message"]),
    }


def job_view(job: Any) -> dict[str, Any]:
    """The REST view of a job, as a JSON-ready dict (callers add ``teamToken`` and the like)."""
    return msgspec.to_builtins(JobView(**job_fields(job)))


# -- messages between processes -----------------------------------------------------------------


class Message(_Part, tag_field="type"):
    CHANNEL: ClassVar[str] = ""


class News(Message, tag="news"):
    """Public news of one committed job, for the realtime servers to coalesce into broadcasts."""

    CHANNEL = "changes (workers -> realtime)"

    competition: str
    competition_id: int
    at: Annotated[Iso, Meta(description="the commit time")]
    changes: list[ScoreChange] = []
    claims: list[Claim] = []
    releases: list[Release] = []


class CompetitionSettings(Message, tag="competition"):
    """An organiser changed a competition; realtime servers refresh what they hold of it (they
    also re-read it from PostgreSQL on every broadcast and every ``REALTIME_REFRESH`` seconds, so
    a lost message costs nothing). A freeze lifted is revealed to spectators in one broadcast."""

    CHANNEL = "changes (API -> realtime)"

    competition: str
    competition_id: int
    at: Iso
    state: CompetitionStateName
    leaderboard_size: int
    freeze_at: Iso | None


ChangeMessage = Union[News, CompetitionSettings]  # noqa: UP007


class JobFinished(Message, tag="job_finished"):
    """A job reached its final state and the result is committed (``Prefer: wait`` waiters)."""

    CHANNEL = "jobs (workers -> API)"

    job_id: str
    status: JobStatus
    job: Annotated[JobView | None, Meta(description="the job as `GET /api/v1/jobs/{jobId}` shows it, so a waiting "
                                                    "request answers without reading it; left out by older "
                                                    "consumers")] = None


MESSAGES: tuple[type[Message], ...] = (*typing.get_args(ChangeMessage), JobFinished)

_change_decoder = msgspec.json.Decoder(ChangeMessage)
_job_decoder = msgspec.json.Decoder(JobFinished)


def encode(message: Message) -> bytes:
    return msgspec.json.encode(message)


def decode_change(raw: bytes | str) -> News | CompetitionSettings:
    return _change_decoder.decode(raw)


def decode_job_finished(raw: bytes | str) -> JobFinished:
    return _job_decoder.decode(raw)


# -- the generated document ---------------------------------------------------------------------

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "events.md"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        if base is str and any(getattr(m, "pattern", None) for m in meta):
            return "ISO 8601 string"
        return _type_name(base)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " / ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "object"
    if isinstance(tp, type) and issubclass(tp, Struct):
        return tp.__name__
    return {str: "string", int: "integer", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def _description(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        for meta in reversed(typing.get_args(tp)[1:]):
            if isinstance(meta, Meta) and meta.description and not meta.pattern:
                return meta.description
    return ""


def _fields_table(cls: type[Struct], skip: Iterable[str] = (), defaults: bool = True) -> list[str]:
    hints = typing.get_type_hints(cls, include_extras=True)
    rows = ["| field | type | notes |", "|---|---|---|"]
    for f in msgspec.structs.fields(cls):
        if f.encode_name in skip:
            continue
        notes = _description(hints[f.name])
        if defaults and not f.required and f.default is not msgspec.NODEFAULT:
            notes = (notes + "; " if notes else "") + f"default `{msgspec.json.encode(f.default).decode()}`"
        rows.append(f"| `{f.encode_name}` | {_type_name(hints[f.name])} | {notes} |")
    return rows


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split()).replace("``", "`")


def render_document() -> str:
    lines = [
        "# Events",
        "",
        "Generated from `models/events.py` by `python -m models.events --write`; a test fails when",
        "this file is out of date. Field names are as on the wire (camelCase).",
        "",
        "## Socket.IO events",
        "",
        "Every payload carries these fields:",
        "",
        *_fields_table(Event, defaults=False),
        "",
    ]
    base = {f.encode_name for f in msgspec.structs.fields(Event)}
    for name, cls in EVENTS.items():
        lines += [f"### `{name}`", "", _doc(cls), "", f"Rooms: {cls.ROOMS}.", "", *_fields_table(cls, base), ""]
    parts = [Standing, ScoreChange, Claim, Release, JobLinks, JobError]
    lines += ["### Parts", ""]
    for cls in parts:
        lines += [f"#### {cls.__name__}", ""]
        if cls.__doc__:
            lines += [_doc(cls), ""]
        lines += [*_fields_table(cls), ""]
    lines += [
        "## Messages between processes (Redis pub/sub)",
        "",
        "JSON objects; `type` names the kind. The `socketio` channel carries python-socketio's own",
        "envelope around the Socket.IO events above.",
        "",
    ]
    for cls in MESSAGES:
        tag = cls.__struct_config__.tag
        lines += [f"### `{tag}`", "", _doc(cls), "", f"Channel: {cls.CHANNEL}.", "",
                  *_fields_table(cls), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render_document()
    if argv == ["--write"]:
        DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
        DOC_PATH.write_text(text)
        print(f"wrote {DOC_PATH}")
    elif argv == ["--check"]:
        if not DOC_PATH.exists() or DOC_PATH.read_text() != text:
            print(f"{DOC_PATH} is out of date; run: python -m models.events --write", file=sys.stderr)
            return 1
    elif not argv:
        sys.stdout.write(text)
    else:
        print("usage: python -m models.events [--write | --check]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
