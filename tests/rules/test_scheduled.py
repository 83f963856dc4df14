"""Jobs the system records for itself: one per claim or box, on the queue that serialises it."""

from __future__ import annotations

from tests.rules.harness import Game, queue_for
from workers.rules import SYSTEM_OWNER, Outbox, schedule_box_expiry, schedule_claim_release


def test_a_box_expiry_is_recorded_once_and_applied_on_the_competition_queue(game: Game) -> None:
    comp = game.competition(claim_timeout_seconds=60)
    game.mystery(comp, "M1")
    team = game.team(comp, "Owls")
    game.run(comp, "mystery_buy", {"difficulty": "EASY"}, team).ok
    (box,) = game.boxes(team)
    first, second = Outbox(), Outbox()
    # The sweeper's next pass finds the same box again before the job has run.
    schedule_box_expiry(game.session, game.settings, comp.id, team.id, box.id, first)
    schedule_box_expiry(game.session, game.settings, comp.id, team.id, box.id, second)
    (job,) = game.created_jobs(comp)
    assert (job.kind, job.payload, job.team_id, job.owner_hash, job.idempotency_key) == (
        "mystery_expire", {"boxId": box.id, "reason": "expired"}, team.id, SYSTEM_OWNER, f"expire-box:{box.id}")
    assert job.queue == queue_for(game.settings, comp.id, "mystery_expire", job.payload)
    assert (first.enqueue, second.enqueue) == ([(str(job.id), "mystery_expire", job.queue)], [])
    job.created_at = game.later(61)
    assert game.apply(job).ok["state"] == "forfeited"


def test_a_claim_expiry_is_recorded_once_on_the_questions_board_queue(game: Game) -> None:
    comp = game.competition(claim_timeout_seconds=60)
    team = game.team(comp, "Owls")
    claim = game.claim(team, game.question(comp, "Q7"))
    outbox = Outbox()
    for _ in range(2):
        schedule_claim_release(game.session, game.settings, comp.id, team.id, claim.id, "Q7", "expired", outbox)
    (job,) = game.created_jobs(comp)
    assert job.payload == {"questionId": "Q7", "claimId": claim.id, "reason": "expired"}
    # The same queue as every claim and answer of Q7, so the release cannot overtake an answer.
    assert job.queue == queue_for(game.settings, comp.id, "claim", {"questionId": "Q7"})
    assert outbox.enqueue == [(str(job.id), "claim_release", job.queue)]
    job.created_at = game.later(61)
    assert game.apply(job).ok["reason"] == "expired"
    assert game.claims(comp) == {}
