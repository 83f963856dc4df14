"""Ranking queries on PostgreSQL, the source of truth. Points descending, ties to whoever
reached the score first (then the lower team id, so the order is total)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, false, func, or_, select, tuple_
from sqlalchemy.orm import Session

from models.live import Standing
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


def all_standings(session: Session, competition_id: int) -> list[Standing]:
    teams = session.scalars(select(Team).where(Team.competition_id == competition_id)).all()
    return [standing(t) for t in teams]
