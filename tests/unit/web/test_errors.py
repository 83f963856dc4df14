"""Problem details: msgspec's messages become field-level 422s; every error has type/title/status."""

from __future__ import annotations

from typing import Any

import falcon
import msgspec
import pytest

from web.errors import PROBLEM_BASE, Problem, invalid, problem_body, validation_problem
from web.schemas import BuyMysteryBox, CreateCompetition, NewQuestions, RegisterTeam, SubmitAnswer, UpdateCompetition


def decode_error(raw: bytes, schema: Any) -> msgspec.ValidationError:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(raw, type=schema)
    return caught.value


@pytest.mark.parametrize(
    ("raw", "schema", "field"),
    [
        (b"{}", RegisterTeam, "teamName"),
        (b'{"teamName": 5}', RegisterTeam, "teamName"),
        (b'{"teamName": ""}', RegisterTeam, "teamName"),
        (b'{"teamName": "' + b"x" * 65 + b'"}', RegisterTeam, "teamName"),
        (b'{"teamName": "a", "members": ["x", 3]}', RegisterTeam, "members[1]"),
        (b'{"teamName": "a", "members": "x"}', RegisterTeam, "members"),
        (b'{"teamName": "a", "email": "not-an-email"}', RegisterTeam, "email"),
        (b'{"questionId": "Q1"}', SubmitAnswer, "answer"),
        (b'{"questionId": "Q 1", "answer": "x"}', SubmitAnswer, "questionId"),
        (b'{"questionId": ["Q1"], "answer": "x"}', SubmitAnswer, "questionId"),
        (b'{"difficulty": "IMPOSSIBLE"}', BuyMysteryBox, "difficulty"),
        (b'{"difficulty": "easy"}', BuyMysteryBox, "difficulty"),
        (b'[{"questionId": "Q1", "question": "x"}]', NewQuestions, "[0].answer"),
        (b'[{"questionId": "Q1", "question": "x", "answer": "y"}, {"question": "x", "answer": "y"}]',
         NewQuestions, "[1].questionId"),
        (b'{"slug": "Bad Slug", "title": "t"}', CreateCompetition, "slug"),
        (b'{"title": "t"}', CreateCompetition, "slug"),
        (b'{"maxOpenClaims": 0}', UpdateCompetition, "maxOpenClaims"),
        (b'{"state": "started"}', UpdateCompetition, "state"),
        (b'{"mysteryPrices": {"EASY": "cheap"}}', UpdateCompetition, "mysteryPrices.EASY"),
        (b'{"mysteryPrices": {"EASY": -1}}', UpdateCompetition, "mysteryPrices.EASY"),
        (b"[1]", RegisterTeam, "body"),
        (b'"text"', SubmitAnswer, "body"),
    ],
)
def test_validation_problem_names_the_field(raw: bytes, schema: Any, field: str) -> None:
    problem = validation_problem(decode_error(raw, schema))
    assert problem.status_code == 422
    assert problem.kind == "validation-error"
    assert problem.errors is not None and len(problem.errors) == 1
    error = problem.errors[0]
    assert error["field"] == field
    assert error["message"]
    assert " - at `$" not in error["message"]
    body = problem_body(problem)
    assert body["type"] == PROBLEM_BASE + "validation-error"
    assert body["status"] == 422
    assert body["title"]
    assert body["errors"] == [error]
    assert field in body["detail"]


def test_validation_problem_root_field_can_be_named() -> None:
    problem = validation_problem(decode_error(b"[1]", RegisterTeam), where="query")
    assert problem.errors == [{"field": "query", "message": "Expected `object`, got `array`"}]


def test_invalid_builds_one_field_error() -> None:
    problem = invalid("limit", "must be an integer", falcon.HTTP_400)
    assert problem.status_code == 400
    assert problem.errors == [{"field": "limit", "message": "must be an integer"}]


def test_problem_body_of_plain_falcon_errors() -> None:
    body = problem_body(falcon.HTTPNotFound())
    assert body == {"type": PROBLEM_BASE + "not-found", "title": "Not found", "status": 404}
    body = problem_body(falcon.HTTPMethodNotAllowed(["GET"]))
    assert (body["type"], body["status"]) == (PROBLEM_BASE + "method-not-allowed", 405)
    body = problem_body(falcon.HTTPError(falcon.HTTP_418))
    assert (body["type"], body["status"]) == (PROBLEM_BASE + "error", 418)


def test_problem_body_keeps_extra_members() -> None:
    problem = Problem(falcon.HTTP_409, "illegal-transition", "Illegal state transition", "no",
                      extra={"state": "draft", "allowed": ["open"]})
    assert problem_body(problem) == {
        "type": PROBLEM_BASE + "illegal-transition",
        "title": "Illegal state transition",
        "status": 409,
        "detail": "no",
        "state": "draft",
        "allowed": ["open"],
    }
