"""hostile teams: claim timeout, registration code, name keys, releases, job lookups, audit outcome

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:30:00
"""

import unicodedata
from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from models.names import InvalidName, name_key, normalise_name

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('register', 'claim', 'submit', 'mystery_buy', 'mystery_forfeit', 'adjust', 'team_update')"
NEW_KINDS = ("kind IN ('register', 'claim', 'submit', 'mystery_buy', 'mystery_forfeit', 'adjust', 'team_update', "
             "'claim_release', 'mystery_expire')")
FINISHED = sa.text("status IN ('succeeded', 'failed')")


def _legacy_name(name: str) -> str:
    """Existing names were stored before the rule: keep what can be kept, drop invisible characters."""
    try:
        return normalise_name(name)
    except InvalidName:
        kept = "".join(c for c in unicodedata.normalize("NFKC", name)
                       if unicodedata.category(c) not in ("Cc", "Cf", "Cs") or c.isspace())
        return " ".join(kept.split())[:64] or "team"


def _backfill_name_keys() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, competition_id, name FROM teams ORDER BY id")).all()
    seen: dict[int, set[str]] = defaultdict(set)
    for team_id, competition_id, name in rows:
        clean = _legacy_name(name)
        key = name_key(clean)
        if key in seen[competition_id]:
            # Two teams already look alike: the later one gets its id in its name, so both stay.
            clean = f"{clean[:50]} (#{team_id})"
            key = name_key(clean)
        seen[competition_id].add(key)
        bind.execute(sa.text("UPDATE teams SET name = :name, name_key = :key WHERE id = :id"),
                     {"name": clean, "key": key, "id": team_id})


def upgrade() -> None:
    op.add_column("competitions", sa.Column("claim_timeout_seconds", sa.Integer(), server_default="600",
                                            nullable=True))
    op.add_column("competitions", sa.Column("registration_code", sa.Text(), nullable=True))
    op.create_check_constraint("claim_timeout", "competitions",
                               "claim_timeout_seconds IS NULL OR claim_timeout_seconds > 0")

    op.add_column("teams", sa.Column("name_key", sa.Text(), nullable=True))
    _backfill_name_keys()
    op.alter_column("teams", "name_key", nullable=False)
    op.create_index("uq_teams_competition_id_name_key", "teams", ["competition_id", "name_key"], unique=True)
    op.drop_index("uq_teams_competition_id_lower_name", table_name="teams")

    op.create_table(
        "claim_releases",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("competition_id", sa.BigInteger(), nullable=False),
        sa.Column("question_id", sa.BigInteger(), nullable=False),
        sa.Column("team_id", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("reason IN ('expired', 'disqualified', 'organiser')",
                           name=op.f("ck_claim_releases_reason")),
        sa.ForeignKeyConstraint(["competition_id"], ["competitions.id"], ondelete="CASCADE",
                                name=op.f("fk_claim_releases_competition_id_competitions")),
        sa.ForeignKeyConstraint(["question_id"], ["questions.id"], ondelete="CASCADE",
                                name=op.f("fk_claim_releases_question_id_questions")),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="CASCADE",
                                name=op.f("fk_claim_releases_team_id_teams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claim_releases")),
    )
    op.create_index("ix_claim_releases_team_id_question_id", "claim_releases", ["team_id", "question_id"])
    # The sweeper's scans for claims and boxes past the timeout.
    op.create_index("ix_claims_claimed_at", "claims", ["claimed_at"])
    op.add_column("mystery_boxes", sa.Column("closed_reason", sa.Text(), nullable=True))
    op.create_index("ix_mystery_boxes_open_since", "mystery_boxes", ["created_at"],
                    postgresql_where=sa.text("state = 'open'"))

    op.drop_constraint(op.f("ck_jobs_kind"), "jobs", type_="check")
    op.create_check_constraint("kind", "jobs", NEW_KINDS)
    op.add_column("jobs", sa.Column("token_seed", sa.LargeBinary(), nullable=True))
    # An unknown bearer token is looked up by its hash (GET /jobs/{id}, Socket.IO connect).
    op.create_index("ix_jobs_owner_hash", "jobs", ["owner_hash"])
    # The sweeper purges finished jobs past the retention period, oldest first.
    op.create_index("ix_jobs_finished", "jobs", ["finished_at"], postgresql_where=FINISHED)
    # A registration has no owner until it is applied, so its key is unique per competition.
    op.create_index("uq_jobs_registration_key", "jobs", ["competition_id", "idempotency_key"], unique=True,
                    postgresql_where=sa.text("kind = 'register' AND idempotency_key IS NOT NULL"))

    op.add_column("audit_log", sa.Column("outcome", sa.Text(), nullable=True))
    op.add_column("audit_log", sa.Column("job_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.create_check_constraint("outcome", "audit_log", "outcome IS NULL OR outcome IN ('applied', 'refused')")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_audit_log_outcome"), "audit_log", type_="check")
    op.drop_column("audit_log", "job_id")
    op.drop_column("audit_log", "outcome")
    op.drop_index("uq_jobs_registration_key", table_name="jobs")
    op.drop_index("ix_jobs_finished", table_name="jobs")
    op.drop_index("ix_jobs_owner_hash", table_name="jobs")
    op.drop_column("jobs", "token_seed")
    op.execute("DELETE FROM jobs WHERE kind IN ('claim_release', 'mystery_expire')")
    op.drop_constraint(op.f("ck_jobs_kind"), "jobs", type_="check")
    op.create_check_constraint("kind", "jobs", OLD_KINDS)
    op.drop_index("ix_mystery_boxes_open_since", table_name="mystery_boxes")
    op.drop_column("mystery_boxes", "closed_reason")
    op.drop_index("ix_claims_claimed_at", table_name="claims")
    op.drop_index("ix_claim_releases_team_id_question_id", table_name="claim_releases")
    op.drop_table("claim_releases")
    op.create_index("uq_teams_competition_id_lower_name", "teams", ["competition_id", sa.text("lower(name)")],
                    unique=True)
    op.drop_index("uq_teams_competition_id_name_key", table_name="teams")
    op.drop_column("teams", "name_key")
    op.drop_constraint(op.f("ck_competitions_claim_timeout"), "competitions", type_="check")
    op.drop_column("competitions", "registration_code")
    op.drop_column("competitions", "claim_timeout_seconds")
