"""scale: partial indexes for claiming, rescuing and pruning; NOTIFY triggers for instant hand-off;
deliveries.attempted_at; runs.lease_generation (fencing)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 09:40:00.000000

The indexes cover only what each query reads, so they stay small however many finished runs the
table holds: claim and rescue read active runs, the retention job reads finished ones.

On PostgreSQL, triggers send `NOTIFY slack_tutor_work` (db/notify.py) when work becomes claimable:
a run or clean-up inserted, a run's lease released while it is due, a run finished (its thread's
next question is due). A run released to wait (a poll, a retry) notifies nobody.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = "status IN ('queued', 'creating', 'unknown', 'streaming', 'polling', 'replying')"
FINISHED = "finished_at IS NOT NULL"

NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION slack_tutor_notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('slack_tutor_work', '');
    RETURN NULL;
END
$$
"""
TRIGGERS = {
    "runs_inserted_notify": "AFTER INSERT ON runs FOR EACH STATEMENT",
    "cleanups_inserted_notify": "AFTER INSERT ON cleanups FOR EACH STATEMENT",
    "runs_due_notify": (
        "AFTER UPDATE OF lease_owner, status ON runs FOR EACH ROW WHEN ("
        "(OLD.lease_owner IS NOT NULL AND NEW.lease_owner IS NULL AND NEW.next_attempt_at <= now()"
        f" AND NEW.{ACTIVE})"
        " OR (NEW.status IN ('done', 'failed') AND OLD.status IS DISTINCT FROM NEW.status))"
    ),
}


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_generation", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_index(
            "ix_runs_active",
            ["next_attempt_at"],
            postgresql_where=sa.text(ACTIVE),
            sqlite_where=sa.text(ACTIVE),
        )
        batch_op.create_index(
            "ix_runs_active_thread",
            ["thread_id", "message_ts"],
            postgresql_where=sa.text(ACTIVE),
            sqlite_where=sa.text(ACTIVE),
        )
        batch_op.create_index(
            "ix_runs_finished",
            ["finished_at"],
            postgresql_where=sa.text(FINISHED),
            sqlite_where=sa.text(FINISHED),
        )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_created_at", ["created_at"])
        batch_op.add_column(sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True))
    # Deleting a run unlinks its files and documents (ON DELETE SET NULL): without these, a scan each.
    with op.batch_alter_table("thread_files", schema=None) as batch_op:
        batch_op.create_index("ix_thread_files_run_id", ["run_id"])
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.create_index("ix_documents_run_id", ["run_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(NOTIFY_FUNCTION)
        for name, when in TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION slack_tutor_notify_work()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, when in TRIGGERS.items():
            table = when.split(" ON ")[1].split()[0]
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS slack_tutor_notify_work()")
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.drop_index("ix_documents_run_id")
    with op.batch_alter_table("thread_files", schema=None) as batch_op:
        batch_op.drop_index("ix_thread_files_run_id")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("attempted_at")
        batch_op.drop_index("ix_deliveries_created_at")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_finished")
        batch_op.drop_index("ix_runs_active_thread")
        batch_op.drop_index("ix_runs_active")
        batch_op.drop_column("lease_generation")
