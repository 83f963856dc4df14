"""Several jobs of one queue in one transaction, as a busy consumer applies them.

The batch locks and loads its teams once, so a rule reads a team's points and flags from that
cache: each job must see what the jobs before it in the batch did, and a refused job must undo
only itself.
"""

from __future__ import annotations

from tests.rules.harness import Game, registration


def test_the_first_claim_in_a_batch_wins_and_its_answer_follows(game: Game) -> None:
    comp = game.competition()
    game.question(comp, "Q1", points=100)
    owls, larks = game.team(comp, "Owls"), game.team(comp, "Larks")
    outcomes = game.apply_batch([
        game.job(comp, "claim", {"questionId": "Q1"}, owls),
        game.job(comp, "claim", {"questionId": "Q1"}, larks),
        game.job(comp, "submit", {"questionId": "Q1", "answer": "42"}, larks),
        game.job(comp, "submit", {"questionId": "Q1", "answer": "42"}, owls),
    ])
    assert [o.code for o in outcomes] == [None, "question_already_claimed", "question_not_claimed", None]
    assert (game.points(owls), game.points(larks)) == (1100, 1000)


def test_a_refused_job_in_a_batch_undoes_only_itself(game: Game) -> None:
    comp = game.competition()
    game.mystery(comp, "M1")
    team = game.team(comp, "Owls")
    outcomes = game.apply_batch([
        game.job(comp, "mystery_buy", {"difficulty": "EASY"}, team),
        game.job(comp, "adjust", {"teamId": team.id, "delta": -2000, "reason": "x"}, team),
        game.job(comp, "adjust", {"teamId": team.id, "delta": 5, "reason": "y"}, team),
        game.job(comp, "mystery_forfeit", {}, team),
    ])
    assert [o.code for o in outcomes] == [None, "insufficient_points", None, None]
    assert [delta for delta, _, _ in game.ledger(team)] == [-50, 5]
    assert [(e.action, e.outcome) for e in game.audit(comp)] == [("team.adjust", "refused"),
                                                                 ("team.adjust", "applied")]


def test_a_rule_sees_the_points_an_earlier_job_of_its_batch_left(game: Game) -> None:
    comp = game.competition(price_easy=50)
    game.mystery(comp, "M1")
    team = game.team(comp, "Owls", points=100)
    outcomes = game.apply_batch([
        game.job(comp, "mystery_buy", {"difficulty": "EASY"}, team),
        game.job(comp, "adjust", {"teamId": team.id, "delta": -40, "reason": "x"}, team),
        game.job(comp, "mystery_forfeit", {}, team),
        game.job(comp, "mystery_buy", {"difficulty": "EASY"}, team),
    ])
    assert [o.code for o in outcomes] == [None, None, None, "insufficient_points"]
    assert game.points(team) == 10


def test_a_disqualification_stops_the_teams_next_job_in_the_same_batch(game: Game) -> None:
    comp = game.competition()
    game.mystery(comp, "M1")
    team = game.team(comp, "Owls")
    outcomes = game.apply_batch([
        game.job(comp, "team_update", {"teamId": team.id, "disqualified": True}, team),
        game.job(comp, "mystery_buy", {"difficulty": "EASY"}, team),
    ])
    assert [o.code for o in outcomes] == [None, "team_disqualified"]


def test_two_registrations_of_one_name_in_a_batch(game: Game) -> None:
    comp = game.competition()
    outcomes = game.apply_batch([game.job(comp, "register", registration("Owls")),
                                 game.job(comp, "register", registration("owls"))])
    assert [o.code for o in outcomes] == [None, "team_name_taken"]
    assert outcomes[0].job.team_id == outcomes[0].ok["teamId"]
