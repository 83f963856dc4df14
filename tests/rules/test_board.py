"""The board: claims, answers and releases, their points, their ledger rows and what they announce."""

from __future__ import annotations

from datetime import timedelta

from models import events
from models.live import iso
from models.tables import ClaimRelease, Team
from tests.rules.harness import Game


def test_a_claim_gives_the_question_but_not_its_answer(game: Game) -> None:
    comp = game.competition()
    game.question(comp, "Q1", answer="Paris", points=250)
    team = game.team(comp, "Owls")
    outcome = game.run(comp, "claim", {"questionId": "Q1"}, team)
    assert outcome.ok == {"questionId": "Q1", "question": "What is Q1?", "options": ["41", "42", "43"],
                          "points": 250}
    assert outcome.outbox.claimed == [events.Claim(question_id="Q1", team_name="Owls")]
    assert outcome.outbox.scores == []
    assert game.claims(comp) == {"Q1": team.id}
    assert game.points(team) == 1000


def test_only_unanswered_claims_count_against_the_limit(game: Game) -> None:
    comp = game.competition(max_open_claims=1)
    for code in ("Q1", "Q2"):
        game.question(comp, code)
    team = game.team(comp, "Owls")
    game.run(comp, "claim", {"questionId": "Q1"}, team).ok
    game.run(comp, "submit", {"questionId": "Q1", "answer": "wrong"}, team).ok
    game.run(comp, "claim", {"questionId": "Q2"}, team).ok
    assert game.claims(comp) == {"Q1": team.id, "Q2": team.id}


def test_a_correct_answer_earns_the_questions_points(game: Game) -> None:
    comp = game.competition(wrong_answer_penalty=30)
    game.question(comp, "Q1", answer="New  York", points=250)
    team = game.team(comp, "Owls")
    game.run(comp, "claim", {"questionId": "Q1"}, team).ok
    outcome = game.run(comp, "submit", {"questionId": "Q1", "answer": "  new york "}, team)
    assert outcome.ok == {"questionId": "Q1", "correct": True, "pointsEarned": 250, "totalPoints": 1250, "rank": 1}
    (submission,) = game.submissions(team)
    assert (submission.answer, submission.correct, submission.points_awarded) == ("  new york ", True, 250)
    assert game.ledger(team) == [(250, "correct_answer", f"submission:{submission.id}")]
    (change,) = outcome.outbox.scores
    assert (change.team.id, change.delta, change.reason, change.rank, change.points) == (
        team.id, 250, "correct_answer", 1, 1250)


def test_a_wrong_answer_costs_the_penalty(game: Game) -> None:
    comp = game.competition(wrong_answer_penalty=30)
    team = game.team(comp, "Owls")
    game.claim(team, game.question(comp, "Q1", answer="Paris"))
    outcome = game.run(comp, "submit", {"questionId": "Q1", "answer": "London"}, team)
    assert outcome.ok == {"questionId": "Q1", "correct": False, "pointsEarned": -30, "totalPoints": 970, "rank": 1}
    (submission,) = game.submissions(team)
    assert game.ledger(team) == [(-30, "wrong_answer", f"submission:{submission.id}")]


def test_the_penalty_never_takes_a_team_below_zero(game: Game) -> None:
    comp = game.competition(wrong_answer_penalty=50)
    team = game.team(comp, "Owls", points=20)
    game.claim(team, game.question(comp, "Q1"))
    result = game.run(comp, "submit", {"questionId": "Q1", "answer": "0"}, team).ok
    assert (result["pointsEarned"], result["totalPoints"]) == (-20, 0)


def test_a_wrong_answer_without_a_penalty_is_announced_but_not_ledgered(game: Game) -> None:
    comp = game.competition()
    team = game.team(comp, "Owls")
    game.team(comp, "Larks", points=2000)
    game.claim(team, game.question(comp, "Q1"))
    outcome = game.run(comp, "submit", {"questionId": "Q1", "answer": "0"}, team)
    assert outcome.ok == {"questionId": "Q1", "correct": False, "pointsEarned": 0, "totalPoints": 1000, "rank": 2}
    assert game.ledger(team) == []
    (change,) = outcome.outbox.scores
    assert (change.delta, change.reason, change.rank) == (0, "wrong_answer", 2)


def test_ties_go_to_who_reached_the_score_first(game: Game) -> None:
    comp = game.competition()
    owls, larks = game.team(comp, "Owls"), game.team(comp, "Larks")
    game.claim(larks, game.question(comp, "Q1", points=100))
    game.claim(owls, game.question(comp, "Q2", points=100))
    assert game.run(comp, "submit", {"questionId": "Q1", "answer": "42"}, larks).ok["rank"] == 1
    assert game.run(comp, "submit", {"questionId": "Q2", "answer": "42"}, owls).ok["rank"] == 2


def test_an_answer_sent_before_the_deadline_counts_however_late_it_is_applied(game: Game) -> None:
    comp = game.competition()
    # The database clock is past the deadline when the rule runs; the job was accepted before it.
    team = game.team(comp, "Owls", deadline=game.later(-10))
    game.claim(team, game.question(comp, "Q1"))
    result = game.run(comp, "submit", {"questionId": "Q1", "answer": "42"}, team, created_at=game.later(-11)).ok
    assert result["correct"]


def test_an_answer_sent_at_the_claim_timeout_is_in_time(game: Game) -> None:
    comp = game.competition(claim_timeout_seconds=600)
    team = game.team(comp, "Owls")
    claim = game.claim(team, game.question(comp, "Q1"))
    at_timeout = claim.claimed_at + timedelta(seconds=600)
    assert game.run(comp, "submit", {"questionId": "Q1", "answer": "42"}, team, created_at=at_timeout).ok["correct"]


def test_without_a_claim_timeout_a_claim_never_expires(game: Game) -> None:
    comp = game.competition(claim_timeout_seconds=None)
    team = game.team(comp, "Owls")
    game.claim(team, game.question(comp, "Q1"))
    result = game.run(comp, "submit", {"questionId": "Q1", "answer": "42"}, team, created_at=game.later(10**7)).ok
    assert result["correct"]


def test_an_organiser_puts_a_claim_back_on_the_board(game: Game) -> None:
    comp = game.competition()
    owls, larks = game.team(comp, "Owls"), game.team(comp, "Larks")
    claim = game.claim(owls, game.question(comp, "Q1"))
    outcome = game.run(comp, "claim_release", {"questionId": "Q1", "reason": "organiser"})
    assert outcome.ok == {"questionId": "Q1", "teamId": owls.id, "teamName": "Owls", "reason": "organiser",
                          "claimedAt": iso(claim.claimed_at), "released": True}
    assert outcome.outbox.released == [events.Release(question_id="Q1", reason="organiser")]
    assert game.claims(comp) == {}
    (entry,) = game.audit(comp)
    assert (entry.action, entry.target, entry.outcome, entry.job_id) == (
        "claim.release", "question:Q1", "applied", outcome.job.id)
    assert entry.before == {"questionId": "Q1", "teamId": owls.id, "teamName": "Owls",
                            "claimedAt": iso(claim.claimed_at)}
    # Released by an organiser, not expired: the old holder is told it holds no claim.
    assert game.refused(comp, "submit", {"questionId": "Q1", "answer": "42"}, owls).code == "question_not_claimed"
    game.run(comp, "claim", {"questionId": "Q1"}, larks).ok
    assert game.claims(comp) == {"Q1": larks.id}


def test_a_claim_past_its_timeout_is_released_and_remembered(game: Game) -> None:
    comp = game.competition(claim_timeout_seconds=600)
    owls = game.team(comp, "Owls")
    claim = game.claim(owls, game.question(comp, "Q1"))
    late = claim.claimed_at + timedelta(seconds=601)
    outcome = game.run(comp, "claim_release", {"questionId": "Q1", "claimId": claim.id, "reason": "expired"},
                       created_at=late)
    assert outcome.ok["reason"] == "expired"
    assert outcome.outbox.released == [events.Release(question_id="Q1", reason="expired")]
    (release,) = game.session.query(ClaimRelease).filter_by(competition_id=comp.id).all()
    assert (release.team_id, release.reason, release.claimed_at) == (owls.id, "expired", claim.claimed_at)
    # The sweeper's releases are not organiser actions.
    assert game.audit(comp) == []
    game.run(comp, "claim", {"questionId": "Q1"}, game.team(comp, "Larks")).ok


def test_points_always_match_the_ledger_through_a_round(game: Game) -> None:
    comp = game.competition(wrong_answer_penalty=10, max_open_claims=2)
    teams = [game.team(comp, name) for name in ("Owls", "Larks", "Wrens")]
    for i in range(6):
        game.question(comp, f"Q{i}", answer=str(i), points=10 * (i + 1))
    for i in range(6):
        team = teams[i % 3]
        game.run(comp, "claim", {"questionId": f"Q{i}"}, team).ok
        game.run(comp, "submit", {"questionId": f"Q{i}", "answer": str(i if i % 2 else -1)}, team).ok
    for team in teams:
        ledger = game.ledger(team)
        assert game.points(team) == 1000 + sum(delta for delta, _, _ in ledger)
    assert [game.points(t) for t in teams] == [1000 - 10 + 40, 1000 + 20 - 10, 1000 - 10 + 60]
    assert all(game.session.get(Team, t.id) is not None for t in teams)
