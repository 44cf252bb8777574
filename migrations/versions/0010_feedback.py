"""feedback: each person's rating of an answer (Slack's feedback buttons) and what was wrong

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-02 11:55:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_uuid", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("rating", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("run_uuid", "user_id", name="uq_feedback_run_user"),
    )
    op.create_index("ix_feedback_team_updated", "feedback", ["team_id", "updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_feedback_team_updated", table_name="feedback")
    op.drop_table("feedback")
