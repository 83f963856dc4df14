"""Registration: a team joins with the competition's starting points and, if it has one, a deadline."""

from __future__ import annotations

import pytest

from models.live import iso
from models.tables import Team
from tests.rules.harness import Game, registration


def test_a_team_starts_with_the_competitions_points_and_time(game: Game) -> None:
    comp = game.competition(starting_points=500, time_limit_seconds=1800)
    outcome = game.run(comp, "register", registration("  Night   Owls ", members=("Ann", " Bo "),
                                                       email="owls@example.org"))
    result = outcome.ok
    team = game.session.get(Team, result["teamId"])
    assert team is not None and team.deadline is not None
    assert result == {"teamId": team.id, "teamName": "Night Owls", "points": 500, "registered": True,
                      "deadline": iso(team.deadline)}
    assert (team.name_key, team.members, team.email, team.starting_points, team.points) == (
        "night owls", ["Ann", "Bo"], "owls@example.org", 500, 500)
    # The token the API handed out in its 202 is the one that now authenticates the team.
    assert team.token_hash == outcome.job.owner_hash
    assert outcome.job.team_id == team.id
    # The deadline runs from when the rule ran (the clock), not from a stored default.
    assert 1790 <= (team.deadline - game.now()).total_seconds() <= 1800 + 120
    # A registration moves no points, so it writes no ledger row; it is still announced.
    assert game.ledger(team) == []
    (change,) = outcome.outbox.scores
    assert (change.team.id, change.delta, change.reason, change.rank, change.points, change.name) == (
        team.id, 0, "registered", None, 500, "Night Owls")


def test_no_time_limit_means_no_deadline(game: Game) -> None:
    result = game.run(game.competition(time_limit_seconds=None), "register", registration("Owls")).ok
    assert result["deadline"] is None


@pytest.mark.parametrize("state", ["open", "running"])
def test_registration_is_open_before_and_during_the_game(game: Game, state: str) -> None:
    assert game.run(game.competition(state=state), "register", registration("Owls")).ok["points"] == 1000


def test_the_right_code_registers(game: Game) -> None:
    comp = game.competition(registration_code="hall-7")
    assert game.run(comp, "register", registration("Owls", code="hall-7")).ok["registered"]


def test_a_code_is_ignored_where_none_is_needed(game: Game) -> None:
    assert game.run(game.competition(), "register", registration("Owls", code="anything")).ok["registered"]


def test_names_are_unique_per_competition_only(game: Game) -> None:
    game.team(game.competition(), "Owls")
    comp = game.competition()
    game.run(comp, "register", registration("Owls")).ok
    assert game.run(comp, "register", registration("Owls 2")).ok["teamName"] == "Owls 2"
