"""index queued jobs per queue, for workers that take a batch of their queue's jobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 15:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_queued_by_queue", "jobs", ["queue", "created_at"],
                    postgresql_where=sa.text("status = 'queued'"))


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_by_queue", table_name="jobs", postgresql_where=sa.text("status = 'queued'"))
