"""The harness itself: each test starts from nothing, and its checks catch what they claim to."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text, update

import workers.rules
from models.tables import Claim, Competition, Job, Team
from tests.rules.harness import Game


@pytest.mark.parametrize("attempt", [1, 2])
def test_nothing_outlives_a_test(game: Game, attempt: int) -> None:
    # Passes twice only if the first run's rows (and its rules' savepoints) were rolled back.
    assert game.session.scalar(select(Competition).where(Competition.slug == "isolation")) is None
    comp = game.competition()
    comp.slug = "isolation"
    team = game.team(comp, "Owls")
    game.question(comp, "Q1")
    game.run(comp, "claim", {"questionId": "Q1"}, team).ok
    game.run(comp, "submit", {"questionId": "Q1", "answer": "42"}, team).ok


def test_the_rules_run_as_the_app_role(game: Game) -> None:
    role = game.session.scalar(text("SELECT current_user"))
    assert role is not None and role.endswith("_app")


def test_a_rule_that_commits_fails_its_test(game: Game, monkeypatch: pytest.MonkeyPatch) -> None:
    comp = game.competition()

    def committing(session: Any, *_: Any) -> dict[str, Any]:
        session.commit()
        return {}

    monkeypatch.setattr(workers.rules, "adjust", committing)
    with pytest.raises(AssertionError, match="committed"):
        game.run(comp, "adjust", {"teamId": game.team(comp).id, "delta": 1, "reason": "x"})


def test_points_moved_without_a_ledger_row_fail_the_check(game: Game) -> None:
    comp = game.competition()
    team = game.team(comp, "Owls")
    game.session.execute(update(Team).where(Team.id == team.id).values(points=Team.points + 5))
    with pytest.raises(AssertionError, match="ledger"):
        game.check_invariants(comp)


def test_a_ledger_row_that_disagrees_with_the_points_fails_the_check(game: Game) -> None:
    comp = game.competition()
    team = game.team(comp, "Owls")
    game.run(comp, "adjust", {"teamId": team.id, "delta": 5, "reason": "x"}).ok
    game.session.execute(text("UPDATE score_events SET points_after = 0 WHERE team_id = :t"), {"t": team.id})
    with pytest.raises(AssertionError, match="newest ledger row"):
        game.check_invariants(comp)


def test_a_refusal_that_leaves_a_write_behind_is_caught(game: Game, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a savepoint (as the consumer runs a claim), a write before the refusal would stay."""
    comp = game.competition()
    team = game.team(comp, "Owls")
    question = game.question(comp, "Q1")

    def half_applied(session: Any, competition: Any, job: Job, outbox: Any) -> dict[str, Any]:
        session.add(Claim(competition_id=competition.id, question_id=question.id, team_id=team.id))
        session.flush()
        raise workers.rules.GameError("claim_limit_reached", "too late to say so")

    monkeypatch.setattr(workers.rules, "claim", half_applied)
    with pytest.raises(AssertionError, match="changed the game"):
        game.refused(comp, "claim", {"questionId": "Q1"}, team)
