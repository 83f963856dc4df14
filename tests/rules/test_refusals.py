"""Every refusal a rule can give, each in its own scenario, and each leaving the game as it was.

``game.refused`` runs the job as a consumer would and compares every game row of the
competition before and after, so a refusal that half-applies (a row written before the check
that refuses it, on a rule the consumer runs without a savepoint) fails here. The last test
checks that this catalogue names every code ``workers/rules.py`` can raise.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest

import workers.rules
from models.tables import Competition, Team
from tests.rules.harness import Game, Outcome, registration


@dataclass(frozen=True)
class Refusal:
    code: str
    scenario: Callable[[Game], Outcome]

    def __str__(self) -> str:
        return self.scenario.__name__


def running_with_team(game: Game, **competition: object) -> tuple[Competition, Team]:
    comp = game.competition(**competition)
    return comp, game.team(comp, "Owls")


# -- register ----------------------------------------------------------------------------------


def register_while_draft(game: Game) -> Outcome:
    return game.refused(game.competition(state="draft"), "register", registration("Owls"))


def register_while_paused(game: Game) -> Outcome:
    return game.refused(game.competition(state="paused"), "register", registration("Owls"))


def register_when_finished(game: Game) -> Outcome:
    return game.refused(game.competition(state="finished"), "register", registration("Owls"))


def register_without_the_code(game: Game) -> Outcome:
    return game.refused(game.competition(registration_code="hall-7"), "register", registration("Owls"))


def register_with_a_wrong_code(game: Game) -> Outcome:
    comp = game.competition(registration_code="hall-7")
    return game.refused(comp, "register", registration("Owls", code="hall-8"))


def register_a_taken_name(game: Game) -> Outcome:
    comp, _ = running_with_team(game)
    return game.refused(comp, "register", registration("Owls"))


def register_a_look_alike_name(game: Game) -> Outcome:
    comp, _ = running_with_team(game)
    # Fullwidth letters, other case, extra spaces: the API's normal form, then the rule's key.
    return game.refused(comp, "register", registration("  \uff2f\uff37\uff2c\uff33 "))


def register_a_casefolded_name(game: Game) -> Outcome:
    comp = game.competition()
    game.team(comp, "Straße")
    return game.refused(comp, "register", registration("STRASSE"))


# -- claim -------------------------------------------------------------------------------------


def claim_while_paused(game: Game) -> Outcome:
    comp, team = running_with_team(game, state="paused")
    game.question(comp, "Q1")
    return game.refused(comp, "claim", {"questionId": "Q1"}, team)


def claim_while_open(game: Game) -> Outcome:
    comp, team = running_with_team(game, state="open")
    game.question(comp, "Q1")
    return game.refused(comp, "claim", {"questionId": "Q1"}, team)


def claim_when_finished(game: Game) -> Outcome:
    comp, team = running_with_team(game, state="finished")
    game.question(comp, "Q1")
    return game.refused(comp, "claim", {"questionId": "Q1"}, team)


def claim_by_a_disqualified_team(game: Game) -> Outcome:
    comp = game.competition()
    game.question(comp, "Q1")
    return game.refused(comp, "claim", {"questionId": "Q1"}, game.team(comp, disqualified=True))


def claim_sent_after_the_deadline(game: Game) -> Outcome:
    comp = game.competition()
    game.question(comp, "Q1")
    team = game.team(comp, deadline=game.later(-10))
    return game.refused(comp, "claim", {"questionId": "Q1"}, team)


def claim_a_missing_question(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.question(comp, "Q1")
    return game.refused(comp, "claim", {"questionId": "Q2"}, team)


def claim_a_question_of_another_competition(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.question(game.competition(), "Q1")
    return game.refused(comp, "claim", {"questionId": "Q1"}, team)


def claim_a_mystery_question(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.mystery(comp, "M1")
    return game.refused(comp, "claim", {"questionId": "M1"}, team)


def claim_your_own_claim_again(game: Game) -> Outcome:
    comp, team = running_with_team(game, max_open_claims=3)
    game.question(comp, "Q1")
    game.run(comp, "claim", {"questionId": "Q1"}, team).ok
    return game.refused(comp, "claim", {"questionId": "Q1"}, team)


def claim_what_another_team_holds(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    question = game.question(comp, "Q1")
    game.claim(game.team(comp, "Larks"), question)
    return game.refused(comp, "claim", {"questionId": "Q1"}, team)


def claim_past_the_limit(game: Game) -> Outcome:
    comp, team = running_with_team(game, max_open_claims=2)
    for code in ("Q1", "Q2", "Q3"):
        game.question(comp, code)
    game.claim(team, game.question(comp, "Q0"))
    game.run(comp, "claim", {"questionId": "Q1"}, team).ok
    return game.refused(comp, "claim", {"questionId": "Q2"}, team)


def claim_an_answered_question(game: Game) -> Outcome:
    comp, team = running_with_team(game, max_open_claims=2)
    game.question(comp, "Q1")
    game.run(comp, "claim", {"questionId": "Q1"}, team).ok
    game.run(comp, "submit", {"questionId": "Q1", "answer": "42"}, team).ok
    # The claim stays with the answer: the question never goes back on the board.
    return game.refused(comp, "claim", {"questionId": "Q1"}, game.team(comp, "Larks"))


# -- submit ------------------------------------------------------------------------------------


def answer_while_paused(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.claim(team, game.question(comp, "Q1"))
    comp.state = "paused"
    return game.refused(comp, "submit", {"questionId": "Q1", "answer": "42"}, team)


def answer_by_a_disqualified_team(game: Game) -> Outcome:
    comp = game.competition()
    team = game.team(comp)
    game.claim(team, game.question(comp, "Q1"))
    team.disqualified = True
    return game.refused(comp, "submit", {"questionId": "Q1", "answer": "42"}, team)


def answer_sent_after_the_deadline(game: Game) -> Outcome:
    comp = game.competition()
    team = game.team(comp, deadline=game.later(60))
    game.claim(team, game.question(comp, "Q1"))
    # Judged by when the API accepted the answer, not by when a consumer gets to it.
    return game.refused(comp, "submit", {"questionId": "Q1", "answer": "42"}, team, created_at=game.later(61))


def answer_a_missing_question(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    return game.refused(comp, "submit", {"questionId": "Q9", "answer": "42"}, team)


def answer_without_a_claim(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.question(comp, "Q1")
    return game.refused(comp, "submit", {"questionId": "Q1", "answer": "42"}, team)


def answer_another_teams_claim(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.claim(game.team(comp, "Larks"), game.question(comp, "Q1"))
    return game.refused(comp, "submit", {"questionId": "Q1", "answer": "42"}, team)


def answer_twice(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.claim(team, game.question(comp, "Q1"))
    game.run(comp, "submit", {"questionId": "Q1", "answer": "41"}, team).ok
    return game.refused(comp, "submit", {"questionId": "Q1", "answer": "42"}, team)


def answer_a_claim_past_its_timeout(game: Game) -> Outcome:
    comp, team = running_with_team(game, claim_timeout_seconds=600)
    claim = game.claim(team, game.question(comp, "Q1"))
    # Before the sweeper's release has run: the answer was sent too late all the same.
    late = claim.claimed_at + timedelta(seconds=601)
    return game.refused(comp, "submit", {"questionId": "Q1", "answer": "42"}, team, created_at=late)


def answer_a_claim_released_as_expired(game: Game) -> Outcome:
    comp, team = running_with_team(game, claim_timeout_seconds=600)
    claim = game.claim(team, game.question(comp, "Q1"))
    late = claim.claimed_at + timedelta(seconds=601)
    game.run(comp, "claim_release", {"questionId": "Q1", "claimId": claim.id, "reason": "expired"},
             created_at=late).ok
    return game.refused(comp, "submit", {"questionId": "Q1", "answer": "42"}, team, created_at=late)


def answer_a_mystery_question_without_a_box(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.mystery(comp, "M1")
    return game.refused(comp, "submit", {"questionId": "M1", "answer": "42"}, team)


def answer_a_forfeited_mystery_box(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.mystery(comp, "M1")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, team).ok
    game.run(comp, "mystery_forfeit", {}, team).ok
    return game.refused(comp, "submit", {"questionId": "M1", "answer": "42"}, team)


def answer_a_mystery_box_twice(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.mystery(comp, "M1")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, team).ok
    game.run(comp, "submit", {"questionId": "M1", "answer": "42"}, team).ok
    return game.refused(comp, "submit", {"questionId": "M1", "answer": "42"}, team)


def answer_an_open_mystery_box_past_its_timeout(game: Game) -> Outcome:
    comp, team = running_with_team(game, claim_timeout_seconds=60)
    game.mystery(comp, "M1")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, team).ok
    return game.refused(comp, "submit", {"questionId": "M1", "answer": "42"}, team, created_at=game.later(61))


def answer_a_mystery_box_that_expired(game: Game) -> Outcome:
    comp, team = running_with_team(game, claim_timeout_seconds=60)
    game.mystery(comp, "M1")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, team).ok
    (box,) = game.boxes(team)
    game.run(comp, "mystery_expire", {"boxId": box.id, "reason": "expired"}, team, created_at=game.later(61)).ok
    return game.refused(comp, "submit", {"questionId": "M1", "answer": "42"}, team, created_at=game.later(30))


# -- mystery boxes -------------------------------------------------------------------------------


def buy_while_paused(game: Game) -> Outcome:
    comp, team = running_with_team(game, state="paused")
    game.mystery(comp, "M1")
    return game.refused(comp, "mystery_buy", {"difficulty": "EASY"}, team)


def buy_by_a_disqualified_team(game: Game) -> Outcome:
    comp = game.competition()
    game.mystery(comp, "M1")
    return game.refused(comp, "mystery_buy", {"difficulty": "EASY"}, game.team(comp, disqualified=True))


def buy_sent_after_the_deadline(game: Game) -> Outcome:
    comp = game.competition()
    game.mystery(comp, "M1")
    return game.refused(comp, "mystery_buy", {"difficulty": "EASY"}, game.team(comp, deadline=game.later(-1)))


def buy_with_a_box_open(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.mystery(comp, "M1")
    game.mystery(comp, "M2")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, team).ok
    return game.refused(comp, "mystery_buy", {"difficulty": "EASY"}, team)


def buy_without_the_points(game: Game) -> Outcome:
    comp = game.competition(price_hard=150)
    game.mystery(comp, "M1", "HARD")
    return game.refused(comp, "mystery_buy", {"difficulty": "HARD"}, game.team(comp, points=149))


def buy_from_an_empty_pool(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.mystery(comp, "M1", "HARD")
    return game.refused(comp, "mystery_buy", {"difficulty": "EASY"}, team)


def buy_the_last_box_another_team_holds(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.mystery(comp, "M1")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, game.team(comp, "Larks")).ok
    return game.refused(comp, "mystery_buy", {"difficulty": "EASY"}, team)


def buy_when_every_question_is_answered(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.mystery(comp, "M1")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, team).ok
    game.run(comp, "submit", {"questionId": "M1", "answer": "no"}, team).ok
    return game.refused(comp, "mystery_buy", {"difficulty": "EASY"}, team)


def forfeit_by_a_disqualified_team(game: Game) -> Outcome:
    comp = game.competition()
    return game.refused(comp, "mystery_forfeit", {}, game.team(comp, disqualified=True))


def forfeit_without_a_box(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    return game.refused(comp, "mystery_forfeit", {}, team)


def forfeit_an_answered_box(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.mystery(comp, "M1")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, team).ok
    game.run(comp, "submit", {"questionId": "M1", "answer": "42"}, team).ok
    return game.refused(comp, "mystery_forfeit", {}, team)


def expire_a_missing_box(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    return game.refused(comp, "mystery_expire", {"boxId": 10**12, "reason": "expired"}, team)


def expire_a_forfeited_box(game: Game) -> Outcome:
    comp, team = running_with_team(game, claim_timeout_seconds=60)
    game.mystery(comp, "M1")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, team).ok
    game.run(comp, "mystery_forfeit", {}, team).ok
    (box,) = game.boxes(team)
    return game.refused(comp, "mystery_expire", {"boxId": box.id, "reason": "expired"}, team,
                        created_at=game.later(61))


def expire_a_box_of_another_competition(game: Game) -> Outcome:
    other, team = running_with_team(game, claim_timeout_seconds=60)
    game.mystery(other, "M1")
    game.run(other, "mystery_buy", {"difficulty": "EASY"}, team).ok
    (box,) = game.boxes(team)
    comp = game.competition(claim_timeout_seconds=60)
    return game.refused(comp, "mystery_expire", {"boxId": box.id, "reason": "expired"}, game.team(comp),
                        created_at=game.later(61))


def expire_a_box_before_its_timeout(game: Game) -> Outcome:
    comp, team = running_with_team(game, claim_timeout_seconds=60)
    game.mystery(comp, "M1")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, team).ok
    (box,) = game.boxes(team)
    return game.refused(comp, "mystery_expire", {"boxId": box.id, "reason": "expired"}, team,
                        created_at=game.later(59))


def expire_a_box_without_a_timeout(game: Game) -> Outcome:
    comp, team = running_with_team(game, claim_timeout_seconds=None)
    game.mystery(comp, "M1")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, team).ok
    (box,) = game.boxes(team)
    return game.refused(comp, "mystery_expire", {"boxId": box.id, "reason": "expired"}, team,
                        created_at=game.later(10**6))


# -- organiser actions -------------------------------------------------------------------------


def adjust_a_team_of_another_competition(game: Game) -> Outcome:
    comp = game.competition()
    stranger = game.team(game.competition())
    return game.refused(comp, "adjust", {"teamId": stranger.id, "delta": 10, "reason": "bonus"}, stranger)


def adjust_below_zero(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    return game.refused(comp, "adjust", {"teamId": team.id, "delta": -1001, "reason": "penalty"}, team)


def rename_a_team_of_another_competition(game: Game) -> Outcome:
    comp = game.competition()
    stranger = game.team(game.competition())
    return game.refused(comp, "team_update", {"teamId": stranger.id, "teamName": "Larks"}, stranger)


def rename_to_a_taken_name(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.team(comp, "Larks")
    return game.refused(comp, "team_update", {"teamId": team.id, "teamName": "LARKS"}, team)


def release_an_unclaimed_question(game: Game) -> Outcome:
    comp = game.competition()
    game.question(comp, "Q1")
    return game.refused(comp, "claim_release", {"questionId": "Q1", "reason": "organiser"})


def release_a_claim_that_has_gone(game: Game) -> Outcome:
    comp, team = running_with_team(game, claim_timeout_seconds=60)
    question = game.question(comp, "Q1")
    claim = game.claim(team, question)
    game.run(comp, "claim_release", {"questionId": "Q1", "reason": "organiser"}).ok
    game.claim(game.team(comp, "Larks"), question)
    # The sweeper's job was for the first claim; the new holder keeps the question.
    return game.refused(comp, "claim_release", {"questionId": "Q1", "claimId": claim.id, "reason": "expired"},
                        created_at=game.later(61))


def release_an_answered_claim(game: Game) -> Outcome:
    comp, team = running_with_team(game)
    game.claim(team, game.question(comp, "Q1"))
    game.run(comp, "submit", {"questionId": "Q1", "answer": "42"}, team).ok
    return game.refused(comp, "claim_release", {"questionId": "Q1", "reason": "organiser"})


def release_as_expired_before_the_timeout(game: Game) -> Outcome:
    comp, team = running_with_team(game, claim_timeout_seconds=60)
    claim = game.claim(team, game.question(comp, "Q1"))
    return game.refused(comp, "claim_release", {"questionId": "Q1", "claimId": claim.id, "reason": "expired"},
                        created_at=game.later(59))


REFUSALS = [
    Refusal("registration_closed", register_while_draft),
    Refusal("registration_closed", register_while_paused),
    Refusal("registration_closed", register_when_finished),
    Refusal("registration_code_invalid", register_without_the_code),
    Refusal("registration_code_invalid", register_with_a_wrong_code),
    Refusal("team_name_taken", register_a_taken_name),
    Refusal("team_name_taken", register_a_look_alike_name),
    Refusal("team_name_taken", register_a_casefolded_name),
    Refusal("competition_not_running", claim_while_paused),
    Refusal("competition_not_running", claim_while_open),
    Refusal("competition_not_running", claim_when_finished),
    Refusal("team_disqualified", claim_by_a_disqualified_team),
    Refusal("deadline_passed", claim_sent_after_the_deadline),
    Refusal("question_not_found", claim_a_missing_question),
    Refusal("question_not_found", claim_a_question_of_another_competition),
    Refusal("question_not_found", claim_a_mystery_question),
    Refusal("question_already_claimed", claim_your_own_claim_again),
    Refusal("question_already_claimed", claim_what_another_team_holds),
    Refusal("question_already_claimed", claim_an_answered_question),
    Refusal("claim_limit_reached", claim_past_the_limit),
    Refusal("competition_not_running", answer_while_paused),
    Refusal("team_disqualified", answer_by_a_disqualified_team),
    Refusal("deadline_passed", answer_sent_after_the_deadline),
    Refusal("question_not_found", answer_a_missing_question),
    Refusal("question_not_claimed", answer_without_a_claim),
    Refusal("question_not_claimed", answer_another_teams_claim),
    Refusal("already_answered", answer_twice),
    Refusal("claim_expired", answer_a_claim_past_its_timeout),
    Refusal("claim_expired", answer_a_claim_released_as_expired),
    Refusal("question_not_claimed", answer_a_mystery_question_without_a_box),
    Refusal("question_not_claimed", answer_a_forfeited_mystery_box),
    Refusal("already_answered", answer_a_mystery_box_twice),
    Refusal("claim_expired", answer_an_open_mystery_box_past_its_timeout),
    Refusal("claim_expired", answer_a_mystery_box_that_expired),
    Refusal("competition_not_running", buy_while_paused),
    Refusal("team_disqualified", buy_by_a_disqualified_team),
    Refusal("deadline_passed", buy_sent_after_the_deadline),
    Refusal("mystery_already_open", buy_with_a_box_open),
    Refusal("insufficient_points", buy_without_the_points),
    Refusal("no_mystery_left", buy_from_an_empty_pool),
    Refusal("no_mystery_left", buy_the_last_box_another_team_holds),
    Refusal("no_mystery_left", buy_when_every_question_is_answered),
    Refusal("team_disqualified", forfeit_by_a_disqualified_team),
    Refusal("no_open_mystery_box", forfeit_without_a_box),
    Refusal("no_open_mystery_box", forfeit_an_answered_box),
    Refusal("no_open_mystery_box", expire_a_missing_box),
    Refusal("no_open_mystery_box", expire_a_forfeited_box),
    Refusal("no_open_mystery_box", expire_a_box_of_another_competition),
    Refusal("claim_not_expired", expire_a_box_before_its_timeout),
    Refusal("claim_not_expired", expire_a_box_without_a_timeout),
    Refusal("team_not_found", adjust_a_team_of_another_competition),
    Refusal("insufficient_points", adjust_below_zero),
    Refusal("team_not_found", rename_a_team_of_another_competition),
    Refusal("team_name_taken", rename_to_a_taken_name),
    Refusal("question_not_claimed", release_an_unclaimed_question),
    Refusal("question_not_claimed", release_a_claim_that_has_gone),
    Refusal("already_answered", release_an_answered_claim),
    Refusal("claim_not_expired", release_as_expired_before_the_timeout),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=str)
def test_refusal(game: Game, refusal: Refusal) -> None:
    outcome = refusal.scenario(game)
    assert outcome.code == refusal.code, outcome.error
    assert outcome.job.status == "failed"
    assert outcome.job.error == {"code": refusal.code, "message": outcome.error.message}
    assert outcome.error.message


def test_every_refusal_code_has_a_scenario() -> None:
    source = inspect.getsource(workers.rules)
    raised = set(re.findall(r'GameError\(\s*"(\w+)"', source))
    assert len(raised) >= 15, raised
    assert raised <= {r.code for r in REFUSALS}, f"no scenario for {sorted(raised - {r.code for r in REFUSALS})}"
