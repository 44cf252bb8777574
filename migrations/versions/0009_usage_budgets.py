"""usage_records (tokens per answer run, kept past the runs' pruning) and channel_budgets

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-02 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_uuid", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("code_interpreter", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        sa.UniqueConstraint("run_uuid", name="uq_usage_records_run_uuid"),
    )
    op.create_index("ix_usage_records_team_day", "usage_records", ["team_id", "created_at"])
    op.create_index("ix_usage_records_channel_day", "usage_records", ["team_id", "channel_id", "created_at"])
    op.create_index("ix_usage_records_user_day", "usage_records", ["team_id", "user_id", "created_at"])
    op.create_table(
        "channel_budgets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("tokens_per_user", sa.BigInteger(), nullable=True),
        sa.Column("tokens_per_channel", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_budgets")),
        sa.UniqueConstraint("team_id", "channel_id", name="uq_channel_budgets_channel"),
    )


def downgrade() -> None:
    op.drop_table("channel_budgets")
    op.drop_index("ix_usage_records_user_day", table_name="usage_records")
    op.drop_index("ix_usage_records_channel_day", table_name="usage_records")
    op.drop_index("ix_usage_records_team_day", table_name="usage_records")
    op.drop_table("usage_records")
