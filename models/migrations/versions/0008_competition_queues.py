"""the mystery.N queues are named competition.N: rename the queue of jobs still waiting

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 04:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A consumer takes the jobs of its own queue by this column: jobs recorded before the upgrade
    # and not yet applied would otherwise wait on a queue that no consumer reads any more. Their
    # messages, sent to mystery.N, are re-sent to competition.N by the sweeper. Finished jobs keep
    # the name they ran under. The partial index ix_jobs_unfinished keeps this to the few unfinished rows.
    op.execute("UPDATE jobs SET queue = 'competition.' || substr(queue, 9) "
               "WHERE status IN ('queued', 'running') AND queue LIKE 'mystery.%'")


def downgrade() -> None:
    op.execute("UPDATE jobs SET queue = 'mystery.' || substr(queue, 13) "
               "WHERE status IN ('queued', 'running') AND queue LIKE 'competition.%'")
