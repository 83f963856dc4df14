"""organiser jobs: points adjustments and team updates

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 15:15:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "kind IN ('register', 'claim', 'submit', 'mystery_buy', 'mystery_forfeit')"
NEW = "kind IN ('register', 'claim', 'submit', 'mystery_buy', 'mystery_forfeit', 'adjust', 'team_update')"


def upgrade() -> None:
    op.drop_constraint(op.f("ck_jobs_kind"), "jobs", type_="check")
    op.create_check_constraint("kind", "jobs", NEW)
    op.create_index("ix_score_events_competition_id_created_at", "score_events", ["competition_id", "created_at"])
    op.create_index("ix_jobs_competition_id", "jobs", ["competition_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_competition_id", table_name="jobs")
    op.drop_index("ix_score_events_competition_id_created_at", table_name="score_events")
    op.drop_constraint(op.f("ck_jobs_kind"), "jobs", type_="check")
    op.create_check_constraint("kind", "jobs", OLD)
