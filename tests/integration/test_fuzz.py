"""Property-based fuzzing of the running API against its OpenAPI document (schemathesis).

Every operation gets schemathesis' example, coverage (boundary values, missing and mistyped
fields, wrong content types) and fuzzing phases, valid and invalid inputs, as the organiser or
as a real team depending on the operation's ``security``. Every response must be documented,
match its schema and media type, and no input may produce a 5xx.

The schema is built when this module is imported, because ``schema.parametrize()`` needs it
at collection time, before the stack is up; schemathesis' lazy loader
(``schemathesis.pytest.from_fixture``) does not work with pytest 9.2 (it sets
``node._nodeid``, which pytest no longer has). ``test_the_fuzzed_document_is_the_served_one``
pins the imported document to the /openapi.json the running app serves, and every request
goes to the running app.

Each run draws a fresh seed (printed at the start, and in every failure): ``FUZZ_SEED=<n>``
replays a run. ``FUZZ_EXAMPLES`` sets the examples per operation (25 here and in CI; ``make
fuzz`` runs 200). On top of schemathesis' bodies and parameters, each case may get a hostile
token (garbage, enormous, another scheme, the wrong kind) and hostile headers (``Prefer: wait=``
with thousands of digits, unprintable or guessable Idempotency-Keys, odd Origins), drawn from
the same seed.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import string
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
)
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from tests.support import Api, Stack, TeamHandle, expect, questions, unique
from web.openapi import build_spec

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
SEED = int(os.environ.get("FUZZ_SEED") or secrets.randbits(32))
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 25)
# Known before the stack starts, so every operation can be aimed at this live competition:
# requests then get past the 404 of an unknown slug, into validation and the game rules.
FUZZ_SLUG = f"fuzz-{uuid.uuid4().hex[:12]}"
# A team may write RATE_LIMIT_TEAM (100) times per 10 s and the fuzzer writes faster than
# any team, so it spreads its requests over a pool of real teams to stay clear of 429. They
# register up front: the fuzzer soon moves the competition to a state that refuses sign-ups.
TEAMS = 16

schema = schemathesis.openapi.from_dict(
    build_spec(),
    config=schemathesis.Config.from_dict({
        "seed": SEED,
        "cache": {"enabled": False},
        "generation": {
            "max-examples": MAX_EXAMPLES,
            # Tokens are not generated: each case gets the real token its operation needs
            # (a missing, malformed or wrong token is covered by test_contract.py).
            "with-security-parameters": False,
        },
        "parameters": {"slug": FUZZ_SLUG},
        # An over-long query string is refused by gunicorn with 414 before the app sees it.
        # (schemathesis's own list, with 414 added.)
        "checks": {"negative_data_rejection": {"expected-statuses": [
            "400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429", "5xx"]}},
    }),
)


class Tokens:
    """Real team tokens of the fuzzed competition, taken in turn."""

    def __init__(self, teams: list[TeamHandle]) -> None:
        self.teams = itertools.cycle(teams)
        self.lock = threading.Lock()

    def team(self) -> str:
        with self.lock:
            return next(self.teams).token


@pytest.fixture(scope="module")
def fuzz_api(stack: Stack) -> Iterator[Api]:
    client = Api(stack.api_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def fuzzed(fuzz_api: Api) -> dict[str, Any]:
    """The running competition every case is aimed at: a board, mystery questions, teams."""
    fuzz_api.create_competition(FUZZ_SLUG)
    fuzz_api.add_questions(FUZZ_SLUG, questions(5) + questions(5, prefix="M", kind="mystery", difficulty="EASY"))
    target = fuzz_api.register(FUZZ_SLUG, unique("target"))
    pool = [fuzz_api.register(FUZZ_SLUG, unique("fuzz")) for _ in range(TEAMS)]
    return {"team": target, "tokens": Tokens(pool)}


def test_the_fuzzed_document_is_the_served_one(fuzz_api: Api) -> None:
    served = fuzz_api.request("GET", "/openapi.json")
    expect(served, 200)
    assert served.headers["Content-Type"].startswith("application/json")
    assert served.json()["openapi"].startswith("3.1")
    assert served.json() == json.loads(json.dumps(build_spec()))


@pytest.fixture(scope="module", autouse=True)
def _announce_seed(request: pytest.FixtureRequest) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    line = f"fuzz seed {SEED} ({MAX_EXAMPLES} examples per operation); replay with FUZZ_SEED={SEED}"
    if reporter is not None and capture is not None:
        # Past pytest's capture, so the seed is on the terminal whether the run passes or fails.
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    print(line)


_PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "
# Header values go out as Latin-1, so the hostile ones stay inside it.
_LATIN1 = _PRINTABLE + "\xa0\xe9\xff\xd7"
_counters: dict[str, itertools.count[int]] = {}


def _rng(case: Any) -> random.Random:
    """Per case, from the run's seed: the same seed replays the same hostile headers."""
    label = case.operation.label
    counter = _counters.setdefault(label, itertools.count())
    return random.Random(f"{SEED}:{label}:{next(counter)}")


def _garbage(rng: random.Random, alphabet: str, low: int, high: int) -> str:
    # requests refuses to send a header value with leading whitespace.
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high))).lstrip()


def _hostile_token(rng: random.Random, fuzzed: dict[str, Any], admin_token: str) -> str | None:
    choice = rng.randrange(7)
    if choice == 0:
        return None
    if choice == 1:
        return "Bearer " + _garbage(rng, _LATIN1, 1, 300).strip()
    if choice == 2:
        return "Bearer " + "A" * rng.randint(1000, 6000)
    if choice == 3:
        return rng.choice(["Basic dXNlcjpwYXNz", "Bearer", "bearer  ", "Token abc", _garbage(rng, _PRINTABLE, 1, 40)])
    if choice == 4:
        # The wrong kind of real token: 403 on an organiser route, 401 on a team's.
        return f"Bearer {rng.choice([fuzzed['tokens'].team(), admin_token])}"
    if choice == 5:
        return "Bearer " + secrets.token_urlsafe(32)
    return "Bearer " + fuzzed["team"].token[:-1] + "x"


def _hostile_headers(rng: random.Random, case: Any) -> dict[str, str]:
    names = {p["name"] for p in case.operation.definition.raw.get("parameters", [])}
    headers: dict[str, str] = {}
    if "Prefer" in names and rng.random() < 0.4:
        headers["Prefer"] = rng.choice([
            "wait=" + "9" * rng.randint(1, 5000), "wait=" + "0" * rng.randint(1, 3000) + "1", "wait=abc",
            "respond-async, wait=1", "wait=-5", "wait=" + _garbage(rng, _LATIN1, 0, 50),
        ])
    if "Idempotency-Key" in names and rng.random() < 0.4:
        headers["Idempotency-Key"] = rng.choice([
            "1", str(uuid.uuid4()), "\x7f" * 5, "k" * 300, _garbage(rng, _LATIN1, 1, 255).strip() or "x",
        ])
    if rng.random() < 0.2:
        headers["Origin"] = rng.choice(["null", "https://evil.example", _garbage(rng, _PRINTABLE, 0, 100)])
    if rng.random() < 0.1:
        headers["X-Forwarded-For"] = _garbage(rng, _PRINTABLE, 0, 200)
    return headers


def _authorise(case: Any, fuzzed: dict[str, Any], admin_token: str, rng: random.Random) -> None:
    security = case.operation.definition.raw.get("security") or []
    schemes = {name for requirement in security for name in requirement}
    headers = {**(case.headers or {}), **_hostile_headers(rng, case)}
    if "teamToken" in schemes:
        headers["Authorization"] = f"Bearer {fuzzed['tokens'].team()}"
    elif "adminToken" in schemes:
        headers["Authorization"] = f"Bearer {admin_token}"
    hostile = rng.random() < 0.3
    if schemes and hostile:
        token = _hostile_token(rng, fuzzed, admin_token)
        if token is None:
            headers.pop("Authorization", None)
        else:
            headers["Authorization"] = token
    elif not schemes and hostile:
        # A public route ignores a bearer token it does not know.
        headers["Authorization"] = "Bearer " + _garbage(rng, string.ascii_letters + string.digits, 1, 200)
    case.headers = headers


def _aim(case: Any, fuzzed: dict[str, Any]) -> None:
    """A valid team id goes to the real team, so the request reaches body validation and the
    rule instead of stopping at the 404 of an unknown team; an invalid one is left alone."""
    team_id = (case.path_parameters or {}).get("team_id")
    if isinstance(team_id, int) and not isinstance(team_id, bool) and team_id >= 1:
        case.path_parameters["team_id"] = fuzzed["team"].id


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_matches_its_contract(case: Any, fuzzed: dict[str, Any], fuzz_api: Api) -> None:
    _authorise(case, fuzzed, fuzz_api.admin_token, _rng(case))
    _aim(case, fuzzed)
    try:
        case.call_and_validate(base_url=fuzz_api.base_url, checks=CHECKS, timeout=30)
    except Exception as failure:
        failure.add_note(f"fuzz seed {SEED}: replay with FUZZ_SEED={SEED} FUZZ_EXAMPLES={MAX_EXAMPLES}")
        raise
