"""cleanups

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 12:59:03.870495
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cleanups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("object_id", sa.String(length=128), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cleanups")),
    )
    with op.batch_alter_table("cleanups", schema=None) as batch_op:
        batch_op.create_index("ix_cleanups_due", ["done_at", "next_attempt_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("cleanups", schema=None) as batch_op:
        batch_op.drop_index("ix_cleanups_due")

    op.drop_table("cleanups")
