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
"""

from __future__ import annotations

import itertools
import json
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
SEED = 20240611
MAX_EXAMPLES = 25
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


def _authorise(case: Any, fuzzed: dict[str, Any], admin_token: str) -> None:
    security = case.operation.definition.raw.get("security") or []
    schemes = {name for requirement in security for name in requirement}
    if "teamToken" in schemes:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {fuzzed['tokens'].team()}"}
    elif "adminToken" in schemes:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {admin_token}"}


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
    _authorise(case, fuzzed, fuzz_api.admin_token)
    _aim(case, fuzzed)
    case.call_and_validate(base_url=fuzz_api.base_url, checks=CHECKS, timeout=30)
