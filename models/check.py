"""The invariant checker: ``python3 manage.py check [SLUG]`` (``python -m models.check``).

Safe to run at any time, during an event too: it only reads. It prints one line per problem
and exits 1 when it finds any, 0 when every invariant holds:

- the ledger: every team's points equal its starting points plus the sum of its score events,
  and no job wrote two ledger rows for one reason (a job applied twice);
- uniqueness: one claim per question, one answer per team and question, at most one open
  mystery box per team, no mystery question held by two boxes;
- jobs: none queued or running for longer than ``--stuck-after`` seconds;
- the Redis leaderboard cache of every live competition equals PostgreSQL's standings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.db import make_engine, make_sessionmaker
from models.live import Live, utcnow
from models.ranking import leaderboard
from models.tables import Competition
from settings import Settings

LIVE_STATES = ("open", "running", "paused")


@dataclass(frozen=True)
class Finding:
    competition: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.competition}: {self.check}: {self.detail}"


# Each query returns (detail,) rows, one per violation, for the competition :c.
_QUERIES: dict[str, str] = {
    "ledger": """
        SELECT format('team %s (%s) has %s points; starting %s + ledger %s = %s',
                      t.id, t.name, t.points, t.starting_points, COALESCE(SUM(e.delta), 0),
                      t.starting_points + COALESCE(SUM(e.delta), 0))
        FROM teams t LEFT JOIN score_events e ON e.team_id = t.id
        WHERE t.competition_id = :c
        GROUP BY t.id
        HAVING t.points <> t.starting_points + COALESCE(SUM(e.delta), 0)
    """,
    "applied twice": """
        SELECT format('team %s has %s ledger rows for %s (%s)', team_id, COUNT(*), reference, reason)
        FROM score_events
        WHERE competition_id = :c AND (reference LIKE 'submission:%%' OR reference LIKE 'adjustment:%%')
        GROUP BY team_id, reference, reason
        HAVING COUNT(*) > 1
    """,
    "claims": """
        SELECT format('question %s is claimed %s times', question_id, COUNT(*))
        FROM claims WHERE competition_id = :c GROUP BY question_id HAVING COUNT(*) > 1
    """,
    "answers": """
        SELECT format('team %s answered question %s %s times', team_id, question_id, COUNT(*))
        FROM submissions WHERE competition_id = :c GROUP BY team_id, question_id HAVING COUNT(*) > 1
    """,
    "open boxes": """
        SELECT format('team %s has %s open mystery boxes', team_id, COUNT(*))
        FROM mystery_boxes WHERE competition_id = :c AND state = 'open' GROUP BY team_id HAVING COUNT(*) > 1
    """,
    "boxes sold twice": """
        SELECT format('mystery question %s is held by %s boxes', question_id, COUNT(*))
        FROM mystery_boxes WHERE competition_id = :c AND state <> 'forfeited'
        GROUP BY question_id HAVING COUNT(*) > 1
    """,
    "stuck jobs": """
        SELECT format('%s %s job(s) on %s %s for over %s s, the oldest since %s',
                      COUNT(*), kind, queue, status, :stuck, MIN(created_at))
        FROM jobs
        WHERE competition_id = :c AND status IN ('queued', 'running') AND created_at < :cutoff
        GROUP BY kind, queue, status
    """,
}


def check_competition(session: Session, live: Live | None, competition: Competition,
                      stuck_after: float) -> list[Finding]:
    found: list[Finding] = []
    params = {"c": competition.id, "stuck": int(stuck_after), "cutoff": utcnow() - timedelta(seconds=stuck_after)}
    for name, query in _QUERIES.items():
        found += [Finding(competition.slug, name, row[0]) for row in session.execute(text(query), params)]
    if live is not None and competition.state in LIVE_STATES:
        found += _check_cache(session, live, competition)
    return found


def _check_cache(session: Session, live: Live, competition: Competition) -> list[Finding]:
    size = competition.leaderboard_size
    truth = leaderboard(session, competition.id, size)
    if not truth:
        return []
    if not live.has_board(competition.id):
        return [Finding(competition.slug, "leaderboard cache",
                        "missing in Redis (the sweeper rebuilds it within SWEEP_INTERVAL)")]
    cached = live.top(competition.id, size)
    if cached == truth:
        return []
    for want, got in zip(truth, [*cached, *[None] * len(truth)], strict=False):
        if want != got:
            return [Finding(competition.slug, "leaderboard cache",
                            f"rank {want['rank']}: PostgreSQL has {want['teamName']} with {want['points']}, "
                            f"Redis has {got and (got['teamName'], got['points'])}")]
    return [Finding(competition.slug, "leaderboard cache", f"Redis lists {len(cached)} teams, PostgreSQL {len(truth)}")]


def run(settings: Settings, slug: str | None = None, stuck_after: float = 120.0,
        with_cache: bool = True) -> tuple[int, list[Finding]]:
    """Check one competition, or every one; returns how many were checked and what was found."""
    engine = make_engine(settings, pool_size=1)
    live = Live(settings) if with_cache else None
    try:
        with make_sessionmaker(engine)() as session:
            query = session.query(Competition).order_by(Competition.id)
            competitions = query.filter(Competition.slug == slug).all() if slug else query.all()
            if slug and not competitions:
                return 0, [Finding(slug, "competition", "does not exist")]
            found = [f for c in competitions for f in check_competition(session, live, c, stuck_after)]
            return len(competitions), found
    finally:
        engine.dispose()
        if live is not None:
            live.redis.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="manage.py check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slug", nargs="?", help="one competition (default: all)")
    parser.add_argument("--stuck-after", type=float, default=120.0, metavar="S",
                        help="a job queued or running for longer is reported (default 120)")
    parser.add_argument("--no-cache", action="store_true", help="skip the Redis leaderboard cache")
    args = parser.parse_args(argv)
    checked, found = run(Settings.from_env(), args.slug, args.stuck_after, not args.no_cache)
    for finding in found:
        print(finding)
    if found:
        print(f"{len(found)} problem(s) in {checked} competition(s)")
        return 1
    print(f"ok: {checked} competition(s), every invariant holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
