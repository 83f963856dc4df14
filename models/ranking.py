"""Ranking queries on PostgreSQL, the source of truth. Points descending, ties to whoever
reached the score first (then the lower team id, so the order is total)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, false, func, or_, select, tuple_
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from models.live import FrozenBoards, Standing
from models.tables import Team


def rank_of(session: Session, team: Team) -> int:
    ahead = session.scalar(
        select(func.count())
        .select_from(Team)
        .where(
            Team.competition_id == team.competition_id,
            Team.disqualified == false(),
            or_(
                Team.points > team.points,
                and_(
                    Team.points == team.points,
                    tuple_(Team.points_at, Team.id) < tuple_(team.points_at, team.id),
                ),
            ),
        )
    )
    return int(ahead or 0) + 1


def leaderboard(session: Session, competition_id: int, limit: int, offset: int = 0) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Team.name, Team.points)
        .where(Team.competition_id == competition_id, Team.disqualified == false())
        .order_by(Team.points.desc(), Team.points_at, Team.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return [{"rank": offset + i + 1, "teamName": r.name, "points": r.points} for i, r in enumerate(rows)]


def standing(team: Team) -> Standing:
    return Standing(
        team_id=team.id,
        name=team.name,
        points=team.points,
        version=team.points_version,
        reached_at=team.points_at,
        visible=not team.disqualified,
    )


_STANDING_COLUMNS = (Team.id, Team.name, Team.points, Team.points_version, Team.points_at, Team.disqualified)


def all_standings(session: Session, competition_id: int) -> list[Standing]:
    # Plain columns: the sweeper rebuilds a live competition's whole cache now and then.
    rows = session.execute(select(*_STANDING_COLUMNS).where(Team.competition_id == competition_id)).all()
    return _standings(rows)


def snapshot_horizon(session: Session) -> int:
    """The oldest transaction id the next statement's snapshot may not see the effects of (its xmin).

    Every team row written by a transaction that was still running then, or began later, carries
    an ``xmin`` at or past it; every other write is already visible. So ``changed_standings``
    with a horizon taken before a read finds whatever that read could have missed, without
    guessing how long a transaction can take.
    """
    return int(session.scalar(sql_text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")))


# ``xmin`` is the 32-bit transaction id that wrote the row version; compared modulo 2^32 (the way
# PostgreSQL orders xids), so the wrap of the counter does not hide a change. A row older than
# 2^31 transactions may compare as newer: it is then written again, which is harmless.
_CHANGED = sql_text(
    """
    SELECT id, name, points, points_version, points_at, disqualified FROM teams
    WHERE competition_id = :c AND ((xmin::text::bigint - :horizon) & 4294967295) < 2147483648
    """
)


def changed_standings(session: Session, competition_id: int, horizon: int) -> list[Standing]:
    """The standings of teams written by transactions at or past ``horizon`` (``snapshot_horizon``)."""
    return _standings(session.execute(_CHANGED, {"c": competition_id, "horizon": horizon & 0xFFFFFFFF}).all())


def _standings(rows: Any) -> list[Standing]:
    return [Standing(team_id=r.id, name=r.name, points=r.points, version=r.points_version,
                     reached_at=r.points_at, visible=not r.disqualified) for r in rows]


def frozen_leaderboard(session: Session, competition_id: int, freeze_at: datetime) -> list[dict[str, Any]]:
    """The standings as they were at ``freeze_at``, rebuilt from the ledger."""
    rows = session.execute(
        sql_text(
            """
            SELECT t.name,
                   t.starting_points + COALESCE(SUM(e.delta) FILTER (WHERE e.created_at <= :f), 0) AS points,
                   GREATEST(t.created_at, MAX(e.created_at) FILTER (WHERE e.created_at <= :f AND e.delta <> 0))
                       AS reached
            FROM teams t LEFT JOIN score_events e ON e.team_id = t.id
            WHERE t.competition_id = :c AND NOT t.disqualified AND t.created_at <= :f
            GROUP BY t.id
            ORDER BY points DESC, reached, t.id
            """
        ),
        {"c": competition_id, "f": freeze_at},
    ).all()
    return [{"rank": i + 1, "teamName": r.name, "points": int(r.points)} for i, r in enumerate(rows)]


def is_frozen(freeze_at: datetime | None, now: datetime) -> bool:
    return freeze_at is not None and now >= freeze_at


def frozen_board(session: Session, boards: FrozenBoards, competition_id: int, freeze_at: datetime,
                 now: datetime) -> list[dict[str, Any]]:
    """The full frozen standings, cached once late commits can no longer land before the freeze."""
    cached = boards.get(competition_id, freeze_at)
    if cached is not None:
        return cached
    board = frozen_leaderboard(session, competition_id, freeze_at)
    if (now - freeze_at).total_seconds() > 2:
        boards.put(competition_id, freeze_at, board)
    return board
