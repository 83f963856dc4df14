"""Mystery boxes: bought at the competition's price, worth its reward, sold once, never refunded."""

from __future__ import annotations

from datetime import timedelta

from models.tables import Competition, Team
from tests.rules.harness import Game


def bought(game: Game, comp: Competition, team: Team, difficulty: str = "EASY") -> dict[str, object]:
    return game.run(comp, "mystery_buy", {"difficulty": difficulty}, team).ok


def test_a_box_costs_its_price_up_front(game: Game) -> None:
    comp = game.competition(price_medium=70, reward_medium=140)
    game.mystery(comp, "M1", "MEDIUM")
    team = game.team(comp, "Owls")
    outcome = game.run(comp, "mystery_buy", {"difficulty": "MEDIUM"}, team)
    assert outcome.ok == {"mysteryQuestionId": "M1", "question": "What is M1?", "options": ["41", "42", "43"],
                          "difficulty": "MEDIUM", "potentialPoints": 140, "deductedPoints": 70, "totalPoints": 930}
    (box,) = game.boxes(team)
    assert (box.state, box.difficulty, box.price, box.reward, box.closed_at) == ("open", "MEDIUM", 70, 140, None)
    assert game.ledger(team) == [(-70, "mystery_box", "mystery:M1")]
    (change,) = outcome.outbox.scores
    assert (change.team.id, change.delta, change.reason, change.points) == (team.id, -70, "mystery_box", 930)


def test_a_team_may_spend_its_last_point(game: Game) -> None:
    comp = game.competition(price_hard=150)
    game.mystery(comp, "M1", "HARD")
    assert bought(game, comp, game.team(comp, "Owls", points=150), "HARD")["totalPoints"] == 0


def test_each_mystery_question_is_sold_once(game: Game) -> None:
    comp = game.competition()
    for code in ("M1", "M2", "M3"):
        game.mystery(comp, code)
    teams = [game.team(comp, name) for name in ("Owls", "Larks", "Wrens")]
    drawn = {bought(game, comp, team)["mysteryQuestionId"] for team in teams}
    assert drawn == {"M1", "M2", "M3"}


def test_a_correct_mystery_answer_earns_the_reward_and_more_time(game: Game) -> None:
    comp = game.competition(reward_easy=100, deadline_bonus_seconds=120, wrong_answer_penalty=30)
    game.mystery(comp, "M1", answer="Paris")
    deadline = game.later(600)
    team = game.team(comp, "Owls", deadline=deadline)
    bought(game, comp, team)
    outcome = game.run(comp, "submit", {"questionId": "M1", "answer": "paris"}, team)
    assert outcome.ok == {"questionId": "M1", "correct": True, "pointsEarned": 100, "totalPoints": 1050, "rank": 1}
    (box,) = game.boxes(team)
    assert box.state == "answered" and box.closed_at is not None
    (submission,) = game.submissions(team)
    assert game.ledger(team) == [(-50, "mystery_box", "mystery:M1"),
                                 (100, "mystery_correct_answer", f"submission:{submission.id}")]
    game.session.refresh(team)
    assert team.deadline == deadline + timedelta(seconds=120)
    assert [t.id for t in outcome.outbox.deadlines] == [team.id]


def test_a_wrong_mystery_answer_closes_the_box_and_costs_the_penalty(game: Game) -> None:
    comp = game.competition(deadline_bonus_seconds=120, wrong_answer_penalty=30)
    game.mystery(comp, "M1", answer="Paris")
    deadline = game.later(600)
    team = game.team(comp, "Owls", deadline=deadline)
    bought(game, comp, team)
    outcome = game.run(comp, "submit", {"questionId": "M1", "answer": "Lyon"}, team)
    assert outcome.ok == {"questionId": "M1", "correct": False, "pointsEarned": -30, "totalPoints": 920, "rank": 1}
    assert [b.state for b in game.boxes(team)] == ["answered"]
    assert game.ledger(team)[-1][:2] == (-30, "mystery_wrong_answer")
    game.session.refresh(team)
    assert team.deadline == deadline
    assert outcome.outbox.deadlines == []


def test_a_forfeit_refunds_nothing_and_puts_the_question_back(game: Game) -> None:
    comp = game.competition()
    game.mystery(comp, "M1")
    owls, larks = game.team(comp, "Owls"), game.team(comp, "Larks")
    bought(game, comp, owls)
    outcome = game.run(comp, "mystery_forfeit", {}, owls)
    assert outcome.ok == {"mysteryQuestionId": "M1", "difficulty": "EASY", "state": "forfeited", "deductedPoints": 50,
                          "refundedPoints": 0}
    assert outcome.outbox.scores == []
    (box,) = game.boxes(owls)
    assert (box.state, box.closed_reason) == ("forfeited", "forfeit")
    assert game.points(owls) == 950
    assert bought(game, comp, larks)["mysteryQuestionId"] == "M1"


def test_a_box_can_be_given_back_while_paused_or_after_the_deadline(game: Game) -> None:
    comp = game.competition()
    game.mystery(comp, "M1")
    team = game.team(comp, "Owls", deadline=game.later(60))
    bought(game, comp, team)
    comp.state = "paused"
    assert game.run(comp, "mystery_forfeit", {}, team, created_at=game.later(61)).ok["state"] == "forfeited"


def test_a_box_past_its_timeout_expires_without_a_refund(game: Game) -> None:
    comp = game.competition(claim_timeout_seconds=60)
    game.mystery(comp, "M1")
    team = game.team(comp, "Owls")
    bought(game, comp, team)
    (box,) = game.boxes(team)
    outcome = game.run(comp, "mystery_expire", {"boxId": box.id, "reason": "expired"}, team,
                       created_at=game.later(61))
    assert outcome.ok == {"boxId": box.id, "teamId": team.id, "state": "forfeited", "reason": "expired",
                          "refundedPoints": 0}
    game.session.refresh(box)
    assert (box.state, box.closed_reason) == ("forfeited", "expired")
    assert game.points(team) == 950
    # The team may buy again, and the question is back in the pool.
    assert bought(game, comp, team)["mysteryQuestionId"] == "M1"
