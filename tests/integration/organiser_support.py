"""Helpers for the contract and organiser tests: problem+json checks, an in-process app with
settings of its own, event filters, and paths."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import falcon
import falcon.testing
import requests

from settings import Settings
from tests.support import FINISHED, Api, Listener, expect, wait_until
from web.app import create_app
from web.deps import Deps

PROBLEM_BASE = "https://quiz.example/problems/"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def comp(slug: str, suffix: str = "") -> str:
    return f"/api/v1/competitions/{slug}{suffix}"


def problem(resp: requests.Response | falcon.testing.Result, status: int, kind: str | None = None) -> dict[str, Any]:
    """Assert an RFC 9457 problem answer with this status (and problem type); returns its body."""
    code = resp.status_code
    text = resp.text
    assert code == status, f"expected {status}, got {code}: {text[:1000]}"
    content_type = resp.headers.get("Content-Type", "")
    assert content_type.split(";")[0].strip() == "application/problem+json", (content_type, text[:500])
    body = resp.json if isinstance(resp, falcon.testing.Result) else resp.json()
    assert isinstance(body["type"], str) and body["type"], body
    assert isinstance(body["title"], str) and body["title"], body
    assert body["status"] == status, body
    if kind is not None:
        assert body["type"] == PROBLEM_BASE + kind, body
    if "detail" in body:
        assert isinstance(body["detail"], str), body
    return body


def field_errors(body: dict[str, Any]) -> dict[str, str]:
    """``errors: [{field, message}]`` as a dict field -> message."""
    errors = body.get("errors")
    assert isinstance(errors, list) and errors, body
    for error in errors:
        assert isinstance(error["field"], str) and error["field"], body
        assert isinstance(error["message"], str) and error["message"], body
    return {e["field"]: e["message"] for e in errors}


def finish_job(api: Api, resp: requests.Response, token: str) -> dict[str, Any]:
    """The finished job behind a write's 200/202."""
    expect(resp, 200, 202)
    job = resp.json()
    if job["status"] not in FINISHED:
        job = api.wait_job(job["jobId"], token)
    return job


def admin_act(api: Api, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """An organiser write that makes a job (team adjustments and updates); the finished job."""
    return finish_job(api, api.admin(method, path, json=body, wait=10), api.admin_token)


def events_named(listener: Listener, name: str, after: int = 0) -> list[dict[str, Any]]:
    """Events called ``name`` among those received after the first ``after`` events."""
    with listener._cond:
        return [data for event, data in listener.events[after:] if event == name]


def mark(listener: Listener) -> int:
    """How many events the listener has received so far, for ``events_named(..., after=)``."""
    with listener._cond:
        return len(listener.events)


def wait_event_after(listener: Listener, name: str, after: int,
                     match: Callable[[dict[str, Any]], bool] = lambda _: True,
                     timeout: float = 15.0) -> dict[str, Any]:
    """The first ``name`` event after position ``after`` that matches."""
    def found(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
        return next((data for event, data in events[after:] if event == name and match(data)), None)

    return listener.wait_for(found, timeout, message=f"{name} after event {after}")


def claimed_codes(event: dict[str, Any]) -> list[str]:
    """Question ids a (coalesced) ``question_claimed`` reports: the latest and every one merged."""
    return [c["questionId"] for c in event.get("claims", [event])]


def board_names(update: dict[str, Any]) -> list[str]:
    return [row["teamName"] for row in update["leaderboard"]]


def standings_of(update: dict[str, Any]) -> list[tuple[str, int]]:
    return [(row["teamName"], row["points"]) for row in update["leaderboard"]]


@contextlib.contextmanager
def in_process_app(settings: Settings, **overrides: Any) -> Iterator[falcon.testing.TestClient]:
    """The real Falcon app in this process, with settings of its own (low limits, a dead
    dependency, CORS origins); it uses the test database and Redis unless told otherwise."""
    if "database_url" in overrides:
        # The app connects with app_database_url when set; another database means both.
        overrides.setdefault("app_database_url", overrides["database_url"])
    deps = Deps.create(settings.with_overrides(**overrides))
    try:
        yield falcon.testing.TestClient(create_app(deps.settings, deps))
    finally:
        deps.close()


def wait_for_window_start(window: int, within: float = 0.5) -> None:
    """Wait until a fixed rate-limit window has just begun, so a burst falls in one window."""
    wait_until(lambda: time.time() % window < within, timeout=window + 1, interval=0.01,
               message="the start of a rate-limit window")
