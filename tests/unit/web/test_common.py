"""Request helpers: ``Prefer: wait``, pagination cursors, idempotency keys."""

from __future__ import annotations

import base64

import falcon
import falcon.testing
import pytest

from web.errors import Problem
from web.resources.common import MAX_IDEMPOTENCY_KEY, idempotency_key, next_cursor, page_params, prefer_wait


def req(query: str = "", **headers: str) -> falcon.Request:
    return falcon.testing.create_req(query_string=query, headers=headers)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 0),
        ("wait=5", 5),
        ("wait=0", 0),
        ("respond-async, wait=3", 3),
        ("return=minimal; wait=2", 2),
        ("WAIT = 4", 4),
        ("wait=99", 10),
        ("wait=10", 10),
        ("nowait=5", 0),
        ("handling=strict", 0),
        ("wait=", 0),
        ("wait=soon", 0),
    ],
)
def test_prefer_wait(header: str | None, expected: int) -> None:
    request = req(Prefer=header) if header is not None else req()
    assert prefer_wait(request, 10) == expected


def test_page_params_defaults() -> None:
    assert page_params(req()) == (50, 0)
    assert page_params(req(), default=10, maximum=20) == (10, 0)
    assert page_params(req("limit=7")) == (7, 0)
    assert page_params(req("limit=200")) == (200, 0)


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "limit=-3", "limit=201", "limit=1.5"])
def test_page_params_bad_limit(query: str) -> None:
    with pytest.raises(Problem) as caught:
        page_params(req(query))
    assert caught.value.status_code == 400
    assert caught.value.errors is not None and caught.value.errors[0]["field"] == "limit"


def test_cursor_round_trip() -> None:
    cursor = next_cursor(offset=20, limit=10, returned=10)
    assert cursor is not None
    assert page_params(req(f"limit=10&cursor={cursor}")) == (10, 30)
    assert next_cursor(offset=20, limit=10, returned=9) is None
    assert next_cursor(offset=0, limit=10, returned=0) is None


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", ["!!!", "%%%", "a", _encode("o:abc"), _encode("o:-5"), _encode("o:")])
def test_page_params_bad_cursor(cursor: str) -> None:
    with pytest.raises(Problem) as caught:
        page_params(req(f"cursor={cursor}"))
    assert caught.value.status_code == 400
    assert caught.value.errors is not None and caught.value.errors[0]["field"] == "cursor"


def test_idempotency_key() -> None:
    assert idempotency_key(req()) is None
    assert idempotency_key(req(**{"Idempotency-Key": " abc-123 "})) == "abc-123"
    assert idempotency_key(req(**{"Idempotency-Key": "k" * MAX_IDEMPOTENCY_KEY})) == "k" * MAX_IDEMPOTENCY_KEY


@pytest.mark.parametrize("key", ["k" * (MAX_IDEMPOTENCY_KEY + 1), "   "])
def test_idempotency_key_refused(key: str) -> None:
    with pytest.raises(Problem) as caught:
        idempotency_key(req(**{"Idempotency-Key": key}))
    assert caught.value.status_code == 400
    assert caught.value.errors is not None and caught.value.errors[0]["field"] == "Idempotency-Key"
