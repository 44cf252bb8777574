"""files and channel settings

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:49:26.039867
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


DATA_VISUALIZER = (
    "You are great at creating beautiful data visualizations. You analyze data present in files, "
    "understand trends, and come up with data visualization relevant to those trends. You also share "
    "a brief text summary of the trends observed."
)


def upgrade() -> None:
    op.create_table(
        "channel_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("auto_analyse", sa.Boolean(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=True),
        sa.Column("custom_instructions", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["profile_id"], ["profiles.id"], name=op.f("fk_channel_settings_profile_id_profiles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_settings")),
        sa.UniqueConstraint("team_id", "channel_id", name="uq_channel_settings_channel"),
    )
    op.create_table(
        "thread_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("thread_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("slack_file_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("mimetype", sa.String(length=128), nullable=False),
        sa.Column("filetype", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("slack_meta", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("openai_file_id", sa.String(length=128), nullable=True),
        sa.Column("container_path", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_thread_files_run_id_runs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["tutor_threads.id"],
            name=op.f("fk_thread_files_thread_id_tutor_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_thread_files")),
        sa.UniqueConstraint("thread_id", "slack_file_id", name="uq_thread_files_file"),
    )
    with op.batch_alter_table("thread_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_thread_files_slack_file_id"), ["slack_file_id"], unique=False)

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="answer", nullable=False))
        batch_op.add_column(sa.Column("profile_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_runs_profile_id_profiles"), "profiles", ["profile_id"], ["id"]
        )

    with op.batch_alter_table("tutor_threads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", sa.String(length=16), server_default="active", nullable=False))

    profiles = sa.table(
        "profiles",
        sa.column("slug", sa.String),
        sa.column("name", sa.String),
        sa.column("instructions", sa.Text),
        sa.column("model", sa.String),
        sa.column("tools", sa.JSON),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        profiles,
        [
            {
                "slug": "data",
                "name": "Data Visualizer",
                "instructions": DATA_VISUALIZER,
                "model": None,
                "tools": ["code_interpreter"],
                "created_at": datetime.now(UTC),
            }
        ],
    )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM profiles WHERE slug = 'data'"))
    with op.batch_alter_table("tutor_threads", schema=None) as batch_op:
        batch_op.drop_column("state")

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_runs_profile_id_profiles"), type_="foreignkey")
        batch_op.drop_column("profile_id")
        batch_op.drop_column("kind")

    with op.batch_alter_table("thread_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_thread_files_slack_file_id"))

    op.drop_table("thread_files")
    op.drop_table("channel_settings")
