"""Pure helpers that stand between hostile input and the rest: Prefer, key entropy, CSV cells."""

from __future__ import annotations

import secrets
import uuid
from types import SimpleNamespace

import pytest

from web.auth import key_entropy_bits, replay_may_see_token, team_token
from web.resources.common import prefer_wait
from web.resources.manage import _csv_cell, _uncsv_cell


def _prefer(value: str) -> int:
    request = SimpleNamespace(get_header=lambda name: value if name == "Prefer" else None)
    return prefer_wait(request, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize(("header", "wait"), [
    ("wait=5", 5), ("wait=0", 0), ("wait=99", 10), ("wait=" + "9" * 5000, 10), ("wait=" + "0" * 5000, 0),
    ("wait=" + "0" * 4000 + "7", 7), ("respond-async, wait=3", 3), ("wait=abc", 0), ("", 0),
])
def test_prefer_wait_never_parses_a_huge_number(header: str, wait: int) -> None:
    assert _prefer(header) == wait


def test_only_unguessable_keys_may_see_a_replayed_token() -> None:
    assert replay_may_see_token(str(uuid.uuid4()))
    assert replay_may_see_token(uuid.uuid4().hex)
    assert replay_may_see_token(secrets.token_urlsafe(24))
    for weak in (None, "1", "retry", "a" * 200, "12" * 64, "my-retry-key-number-one", "2026-12-01T20:00:00"):
        assert not replay_may_see_token(weak), weak
    assert key_entropy_bits("0123456789abcdef" * 2) == 128


def test_team_tokens_depend_on_the_secret_and_the_seed_only() -> None:
    seed = secrets.token_bytes(32)
    one = SimpleNamespace(secret_key="k" * 40)
    two = SimpleNamespace(secret_key="j" * 40)
    assert team_token(one, seed) == team_token(one, seed)  # type: ignore[arg-type]
    assert team_token(one, seed) != team_token(two, seed)  # type: ignore[arg-type]
    assert team_token(one, seed) != team_token(one, secrets.token_bytes(32))  # type: ignore[arg-type]
    assert len(team_token(one, seed)) == 43  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "cell"), [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"), ("Owls", "Owls"), ("a=b", "a=b"), (5, 5), (-5, -5), (None, None),
    (['=HYPERLINK("x")', "Bo"], '\'=HYPERLINK("x")|Bo'), (["Ann", "=1"], "Ann|=1"),
])
def test_csv_cells_cannot_start_a_formula(value: object, cell: object) -> None:
    assert _csv_cell(value) == cell


def test_the_import_takes_the_neutralising_apostrophe_off() -> None:
    for text in ("=1+1", "-2", "@x", "plain", "'quoted'"):
        exported = _csv_cell(text)
        assert _uncsv_cell(exported) == text
