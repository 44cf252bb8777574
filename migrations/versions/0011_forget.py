"""cleanups.kind: 32 characters ("vector_store_file" is 17: PostgreSQL refused it as varchar(16))

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 12:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cleanups", schema=None) as batch_op:
        batch_op.alter_column("kind", existing_type=sa.String(length=16), type_=sa.String(length=32))


def downgrade() -> None:
    # Kinds longer than 16 characters can't be kept in the old column: those clean-ups are dropped.
    op.execute("DELETE FROM cleanups WHERE length(kind) > 16")
    with op.batch_alter_table("cleanups", schema=None) as batch_op:
        batch_op.alter_column("kind", existing_type=sa.String(length=32), type_=sa.String(length=16))
