"""runs.stream_*: where a live answer is in its event stream and which Slack messages it fills

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 09:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stream_seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("stream_messages", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("stream_mode", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("stream_chars", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("stream_chars")
        batch_op.drop_column("stream_mode")
        batch_op.drop_column("stream_messages")
        batch_op.drop_column("stream_seq")
