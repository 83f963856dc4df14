"""jobs remember the request id of the write that recorded them

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 00:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: adding it rewrites no row, whatever the table's size.
    op.add_column("jobs", sa.Column("request_id", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "request_id")
