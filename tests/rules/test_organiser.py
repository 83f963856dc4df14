"""Organiser jobs: adjustments, renames and disqualifications, each audited with its outcome."""

from __future__ import annotations

from models import events
from models.tables import Competition, Team
from tests.rules.harness import Game, queue_for
from workers.rules import SYSTEM_OWNER


def adjusted(game: Game, comp: Competition, team: Team, delta: int, reason: str = "bonus") -> dict[str, object]:
    return game.run(comp, "adjust", {"teamId": team.id, "delta": delta, "reason": reason}, team).ok


def test_an_adjustment_moves_points_through_the_ledger_and_the_audit_log(game: Game) -> None:
    comp = game.competition()
    owls = game.team(comp, "Owls")
    game.team(comp, "Larks", points=1010)
    outcome = game.run(comp, "adjust", {"teamId": owls.id, "delta": 25, "reason": "late bonus"}, owls)
    assert outcome.ok == {"teamId": owls.id, "teamName": "Owls", "points": 1025, "disqualified": False, "rank": 1,
                          "delta": 25, "reason": "late bonus"}
    assert game.ledger(owls) == [(25, "adjustment: late bonus", f"adjustment:{outcome.job.id}")]
    (change,) = outcome.outbox.scores
    assert (change.delta, change.reason, change.rank, change.points) == (25, "adjustment: late bonus", 1, 1025)
    (entry,) = game.audit(comp)
    assert (entry.actor, entry.action, entry.target, entry.outcome, entry.job_id) == (
        "admin", "team.adjust", f"team:{owls.id}", "applied", outcome.job.id)
    assert entry.before == {"points": 1000}
    assert entry.after == {"teamId": owls.id, "delta": 25, "reason": "late bonus", "points": 1025}


def test_an_adjustment_may_take_a_team_to_exactly_zero(game: Game) -> None:
    comp = game.competition()
    assert adjusted(game, comp, game.team(comp, "Owls"), -1000, "cheating")["points"] == 0


def test_a_refused_adjustment_is_audited_as_refused(game: Game) -> None:
    comp = game.competition()
    team = game.team(comp, "Owls")
    outcome = game.refused(comp, "adjust", {"teamId": team.id, "delta": -1001, "reason": "x"}, team)
    (entry,) = game.audit(comp)
    assert (entry.action, entry.target, entry.outcome, entry.before) == (
        "team.adjust", f"team:{team.id}", "refused", None)
    assert entry.after == {"request": outcome.job.payload, "error": outcome.job.error}
    assert outcome.job.error is not None and outcome.job.error["code"] == "insufficient_points"


def test_a_rename_is_announced_and_audited(game: Game) -> None:
    comp = game.competition()
    team = game.team(comp, "Owls")
    version = team.points_version
    outcome = game.run(comp, "team_update", {"teamId": team.id, "teamName": "Night Owls"}, team)
    assert outcome.ok == {"teamId": team.id, "teamName": "Night Owls", "points": 1000, "disqualified": False,
                          "rank": 1, "changes": ["renamed"]}
    game.session.refresh(team)
    # A new version makes the leaderboard cache take the new name.
    assert (team.name, team.name_key, team.points_version) == ("Night Owls", "night owls", version + 1)
    (change,) = outcome.outbox.scores
    assert (change.delta, change.reason, change.name) == (0, "renamed", "Night Owls")
    assert game.ledger(team) == []
    (entry,) = game.audit(comp)
    assert (entry.action, entry.outcome, entry.before, entry.after) == (
        "team.update", "applied", {"teamName": "Owls", "disqualified": False},
        {"teamId": team.id, "teamName": "Night Owls"})


def test_a_team_may_change_the_case_of_its_own_name(game: Game) -> None:
    comp = game.competition()
    team = game.team(comp, "Owls")
    assert game.run(comp, "team_update", {"teamId": team.id, "teamName": "OWLS"}, team).ok["teamName"] == "OWLS"


def test_an_update_that_changes_nothing_announces_nothing(game: Game) -> None:
    comp = game.competition()
    team = game.team(comp, "Owls")
    outcome = game.run(comp, "team_update", {"teamId": team.id, "teamName": "Owls", "disqualified": False}, team)
    assert outcome.ok["changes"] == []
    assert outcome.outbox.scores == []
    assert [e.outcome for e in game.audit(comp)] == ["applied"]


def test_a_refused_rename_is_audited_as_refused(game: Game) -> None:
    comp = game.competition()
    team = game.team(comp, "Owls")
    game.team(comp, "Larks")
    outcome = game.refused(comp, "team_update", {"teamId": team.id, "teamName": "larks"}, team)
    assert outcome.code == "team_name_taken"
    assert [(e.action, e.outcome) for e in game.audit(comp)] == [("team.update", "refused")]


def test_a_disqualification_forfeits_the_box_and_sends_the_claims_back(game: Game) -> None:
    comp = game.competition(max_open_claims=3)
    owls, larks = game.team(comp, "Owls"), game.team(comp, "Larks", points=900)
    claims = {code: game.claim(owls, game.question(comp, code)) for code in ("Q1", "Q2", "Q3")}
    game.run(comp, "submit", {"questionId": "Q3", "answer": "42"}, owls).ok
    game.mystery(comp, "M1")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, owls).ok

    outcome = game.run(comp, "team_update", {"teamId": owls.id, "disqualified": True}, owls)
    assert outcome.ok == {"teamId": owls.id, "teamName": "Owls", "points": 1050, "disqualified": True, "rank": None,
                          "changes": ["disqualified"]}
    (box,) = game.boxes(owls)
    assert (box.state, box.closed_reason) == ("forfeited", "disqualified")
    assert game.points(owls) == 1050
    (change,) = outcome.outbox.scores
    assert (change.reason, change.rank) == ("disqualified", None)
    (entry,) = game.audit(comp)
    assert entry.after == {"teamId": owls.id, "disqualified": True, "forfeitedBoxes": 1,
                           "releasedClaims": ["Q1", "Q2"]}

    # The unanswered claims go back through release jobs on their own board queues, recorded by
    # the rule and sent after the commit; the answered one stays.
    created = list(game.created_jobs(comp))
    assert sorted((job.kind, job.payload["questionId"]) for job in created) == [
        ("claim_release", "Q1"), ("claim_release", "Q2")]
    for job in created:
        code = job.payload["questionId"]
        assert job.payload == {"questionId": code, "claimId": claims[code].id, "reason": "disqualified"}
        assert (job.queue, job.team_id, job.owner_hash, job.status, job.idempotency_key) == (
            queue_for(game.settings, comp.id, "claim_release", job.payload), owls.id, SYSTEM_OWNER, "queued",
            f"release:{claims[code].id}")
    assert sorted(outcome.outbox.enqueue) == sorted((str(job.id), job.kind, job.queue) for job in created)

    released = [game.apply(job) for job in created]
    assert sorted(r.outbox.released[0].question_id for r in released) == ["Q1", "Q2"]
    assert all(r.outbox.released == [events.Release(question_id=r.ok["questionId"], reason="disqualified")]
               for r in released)
    assert game.claims(comp) == {"Q3": owls.id}
    # The disqualified team is off the leaderboard: Larks lead with fewer points.
    assert game.run(comp, "adjust", {"teamId": larks.id, "delta": 1, "reason": "x"}, larks).ok["rank"] == 1


def test_a_second_disqualification_sends_no_second_release(game: Game) -> None:
    comp = game.competition()
    team = game.team(comp, "Owls")
    game.claim(team, game.question(comp, "Q1"))
    game.run(comp, "team_update", {"teamId": team.id, "disqualified": True}, team).ok
    reinstated = game.run(comp, "team_update", {"teamId": team.id, "disqualified": False}, team)
    assert (reinstated.ok["changes"], reinstated.ok["rank"]) == (["reinstated"], 1)
    again = game.run(comp, "team_update", {"teamId": team.id, "disqualified": True}, team)
    # The release job of that claim is recorded already (its key), so none is sent twice.
    assert again.outbox.enqueue == []
    assert len(list(game.created_jobs(comp))) == 1
