"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 15:02:36.106906
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "competitions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default="draft", nullable=False),
        sa.Column(
            "starting_points", sa.Integer(), server_default="1000", nullable=False
        ),
        sa.Column("time_limit_seconds", sa.Integer(), nullable=True),
        sa.Column("max_open_claims", sa.Integer(), server_default="1", nullable=False),
        sa.Column(
            "wrong_answer_penalty", sa.Integer(), server_default="0", nullable=False
        ),
        sa.Column(
            "deadline_bonus_seconds", sa.Integer(), server_default="0", nullable=False
        ),
        sa.Column(
            "leaderboard_size", sa.Integer(), server_default="10", nullable=False
        ),
        sa.Column("price_easy", sa.Integer(), server_default="50", nullable=False),
        sa.Column("price_medium", sa.Integer(), server_default="100", nullable=False),
        sa.Column("price_hard", sa.Integer(), server_default="150", nullable=False),
        sa.Column("reward_easy", sa.Integer(), server_default="100", nullable=False),
        sa.Column("reward_medium", sa.Integer(), server_default="200", nullable=False),
        sa.Column("reward_hard", sa.Integer(), server_default="300", nullable=False),
        sa.Column("freeze_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "state IN ('draft', 'open', 'running', 'paused', 'finished')",
            name=op.f("ck_competitions_state"),
        ),
        sa.CheckConstraint(
            "leaderboard_size BETWEEN 1 AND 1000",
            name=op.f("ck_competitions_leaderboard_size"),
        ),
        sa.CheckConstraint(
            "max_open_claims >= 1", name=op.f("ck_competitions_max_open_claims")
        ),
        sa.CheckConstraint(
            "price_easy >= 0 AND price_medium >= 0 AND price_hard >= 0 AND reward_easy >= 0 AND reward_medium >= 0 AND reward_hard >= 0",
            name=op.f("ck_competitions_mystery_money"),
        ),
        sa.CheckConstraint(
            "starting_points >= 0", name=op.f("ck_competitions_starting_points")
        ),
        sa.CheckConstraint(
            "time_limit_seconds IS NULL OR time_limit_seconds > 0",
            name=op.f("ck_competitions_time_limit"),
        ),
        sa.CheckConstraint(
            "wrong_answer_penalty >= 0", name=op.f("ck_competitions_penalty")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_competitions")),
        sa.UniqueConstraint("slug", name=op.f("uq_competitions_slug")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("competition_id", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["competition_id"],
            ["competitions.id"],
            name=op.f("fk_audit_log_competition_id_competitions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(
        "ix_audit_log_competition_id_at",
        "audit_log",
        ["competition_id", "at"],
        unique=False,
    )
    op.create_table(
        "questions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("competition_id", sa.BigInteger(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column(
            "options",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("difficulty", sa.Text(), server_default="MEDIUM", nullable=False),
        sa.Column("category", sa.Text(), nullable=True),
        sa.Column("kind", sa.Text(), server_default="board", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "difficulty IN ('EASY', 'MEDIUM', 'HARD')",
            name=op.f("ck_questions_difficulty"),
        ),
        sa.CheckConstraint(
            "kind IN ('board', 'mystery')", name=op.f("ck_questions_kind")
        ),
        sa.CheckConstraint("points >= 0", name=op.f("ck_questions_points")),
        sa.ForeignKeyConstraint(
            ["competition_id"],
            ["competitions.id"],
            name=op.f("fk_questions_competition_id_competitions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_questions")),
    )
    op.create_index(
        "ix_questions_mystery_pool",
        "questions",
        ["competition_id", "kind", "difficulty"],
        unique=False,
    )
    op.create_index(
        "uq_questions_competition_id_code",
        "questions",
        ["competition_id", "code"],
        unique=True,
    )
    op.create_table(
        "teams",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("competition_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "members",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("starting_points", sa.Integer(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column(
            "points_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "points_version", sa.BigInteger(), server_default="0", nullable=False
        ),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "disqualified",
            sa.Boolean(),
            server_default=sa.text("false"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(name) BETWEEN 1 AND 64", name=op.f("ck_teams_name_length")
        ),
        sa.CheckConstraint("points >= 0", name=op.f("ck_teams_points")),
        sa.ForeignKeyConstraint(
            ["competition_id"],
            ["competitions.id"],
            name=op.f("fk_teams_competition_id_competitions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_teams_token_hash")),
    )
    op.create_index(
        "ix_teams_ranking",
        "teams",
        ["competition_id", sa.literal_column("points DESC"), "points_at", "id"],
        unique=False,
    )
    op.create_index(
        "uq_teams_competition_id_lower_name",
        "teams",
        ["competition_id", sa.literal_column("lower(name)")],
        unique=True,
    )
    op.create_table(
        "claims",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("competition_id", sa.BigInteger(), nullable=False),
        sa.Column("question_id", sa.BigInteger(), nullable=False),
        sa.Column("team_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "claimed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["competition_id"],
            ["competitions.id"],
            name=op.f("fk_claims_competition_id_competitions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["question_id"],
            ["questions.id"],
            name=op.f("fk_claims_question_id_questions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_claims_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claims")),
        sa.UniqueConstraint("question_id", name=op.f("uq_claims_question_id")),
    )
    op.create_index("ix_claims_team_id", "claims", ["team_id"], unique=False)
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("competition_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("team_id", sa.BigInteger(), nullable=True),
        sa.Column("owner_hash", sa.LargeBinary(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "kind IN ('register', 'claim', 'submit', 'mystery_buy', 'mystery_forfeit')",
            name=op.f("ck_jobs_kind"),
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_jobs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["competition_id"],
            ["competitions.id"],
            name=op.f("fk_jobs_competition_id_competitions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_jobs_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(
        "ix_jobs_unfinished",
        "jobs",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index(
        "uq_jobs_owner_hash_idempotency_key",
        "jobs",
        ["owner_hash", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "mystery_boxes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("competition_id", sa.BigInteger(), nullable=False),
        sa.Column("team_id", sa.BigInteger(), nullable=False),
        sa.Column("question_id", sa.BigInteger(), nullable=False),
        sa.Column("difficulty", sa.Text(), nullable=False),
        sa.Column("price", sa.Integer(), nullable=False),
        sa.Column("reward", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), server_default="open", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "difficulty IN ('EASY', 'MEDIUM', 'HARD')",
            name=op.f("ck_mystery_boxes_difficulty"),
        ),
        sa.CheckConstraint(
            "state IN ('open', 'answered', 'forfeited')",
            name=op.f("ck_mystery_boxes_state"),
        ),
        sa.CheckConstraint(
            "price >= 0 AND reward >= 0", name=op.f("ck_mystery_boxes_money")
        ),
        sa.ForeignKeyConstraint(
            ["competition_id"],
            ["competitions.id"],
            name=op.f("fk_mystery_boxes_competition_id_competitions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["question_id"],
            ["questions.id"],
            name=op.f("fk_mystery_boxes_question_id_questions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_mystery_boxes_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mystery_boxes")),
    )
    op.create_index(
        "uq_mystery_boxes_one_open_per_team",
        "mystery_boxes",
        ["team_id"],
        unique=True,
        postgresql_where=sa.text("state = 'open'"),
    )
    op.create_index(
        "uq_mystery_boxes_question_taken",
        "mystery_boxes",
        ["question_id"],
        unique=True,
        postgresql_where=sa.text("state <> 'forfeited'"),
    )
    op.create_table(
        "score_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("competition_id", sa.BigInteger(), nullable=False),
        sa.Column("team_id", sa.BigInteger(), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.Column("points_after", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["competition_id"],
            ["competitions.id"],
            name=op.f("fk_score_events_competition_id_competitions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_score_events_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_events")),
    )
    op.create_index(
        "ix_score_events_team_id", "score_events", ["team_id"], unique=False
    )
    op.create_table(
        "submissions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("competition_id", sa.BigInteger(), nullable=False),
        sa.Column("team_id", sa.BigInteger(), nullable=False),
        sa.Column("question_id", sa.BigInteger(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("points_awarded", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["competition_id"],
            ["competitions.id"],
            name=op.f("fk_submissions_competition_id_competitions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["question_id"],
            ["questions.id"],
            name=op.f("fk_submissions_question_id_questions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_submissions_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submissions")),
    )
    op.create_index(
        "ix_submissions_question_id", "submissions", ["question_id"], unique=False
    )
    op.create_index(
        "uq_submissions_team_id_question_id",
        "submissions",
        ["team_id", "question_id"],
        unique=True,
    )

    # The audit log is append-only at the database level, not only by convention.
    op.execute(
        """
        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only';
        END $$;
        CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
            FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
    op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    op.drop_index("uq_submissions_team_id_question_id", table_name="submissions")
    op.drop_index("ix_submissions_question_id", table_name="submissions")
    op.drop_table("submissions")
    op.drop_index("ix_score_events_team_id", table_name="score_events")
    op.drop_table("score_events")
    op.drop_index(
        "uq_mystery_boxes_question_taken",
        table_name="mystery_boxes",
        postgresql_where=sa.text("state <> 'forfeited'"),
    )
    op.drop_index(
        "uq_mystery_boxes_one_open_per_team",
        table_name="mystery_boxes",
        postgresql_where=sa.text("state = 'open'"),
    )
    op.drop_table("mystery_boxes")
    op.drop_index(
        "uq_jobs_owner_hash_idempotency_key",
        table_name="jobs",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index(
        "ix_jobs_unfinished",
        table_name="jobs",
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.drop_table("jobs")
    op.drop_index("ix_claims_team_id", table_name="claims")
    op.drop_table("claims")
    op.drop_index("uq_teams_competition_id_lower_name", table_name="teams")
    op.drop_index("ix_teams_ranking", table_name="teams")
    op.drop_table("teams")
    op.drop_index("uq_questions_competition_id_code", table_name="questions")
    op.drop_index("ix_questions_mystery_pool", table_name="questions")
    op.drop_table("questions")
    op.drop_index("ix_audit_log_competition_id_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("competitions")
