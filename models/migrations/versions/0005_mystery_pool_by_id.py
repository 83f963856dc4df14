"""mystery pool index ordered by id, so a draw starts at a random id and reads a row or two

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 18:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_questions_mystery_pool", table_name="questions")
    op.create_index("ix_questions_mystery_pool", "questions", ["competition_id", "kind", "difficulty", "id"])


def downgrade() -> None:
    op.drop_index("ix_questions_mystery_pool", table_name="questions")
    op.create_index("ix_questions_mystery_pool", "questions", ["competition_id", "kind", "difficulty"])
