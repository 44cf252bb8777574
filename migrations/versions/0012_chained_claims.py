"""A finished run wakes the workers only when its thread has a question left for them to claim

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 16:30:00.000000

The worker that finishes a run takes the next question of its thread in the same commit
(`db.leases.claim_next_in_thread`). Before, every finish sent `NOTIFY slack_tutor_work`, and every
worker woke to run a claim that found nothing: a cost that grew with the number of workers. Now a
finish notifies only if the thread still has an active run that nobody holds. The other causes of
a notification (a run or clean-up inserted, a lease released while due) are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = "status IN ('queued', 'creating', 'unknown', 'streaming', 'polling', 'replying')"
DUE_WHEN = (
    "AFTER UPDATE OF lease_owner, status ON runs FOR EACH ROW WHEN ("
    "(OLD.lease_owner IS NOT NULL AND NEW.lease_owner IS NULL AND NEW.next_attempt_at <= now()"
    f" AND NEW.{ACTIVE})"
    " OR (NEW.status IN ('done', 'failed') AND OLD.status IS DISTINCT FROM NEW.status))"
)
DUE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION slack_tutor_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('done', 'failed') AND NOT EXISTS (
        SELECT 1 FROM runs AS next
        WHERE next.thread_id = NEW.thread_id AND next.id <> NEW.id AND next.{ACTIVE}
          AND (next.lease_owner IS NULL OR next.lease_expires_at < now())
    ) THEN
        RETURN NULL;  -- nothing of this thread is left to claim, or the finishing worker took it
    END IF;
    PERFORM pg_notify('slack_tutor_work', '');
    RETURN NULL;
END
$$
"""  # noqa: S608 - fixed text, no input


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(DUE_FUNCTION)
    op.execute("DROP TRIGGER IF EXISTS runs_due_notify ON runs")
    op.execute(f"CREATE TRIGGER runs_due_notify {DUE_WHEN} EXECUTE FUNCTION slack_tutor_notify_due()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS runs_due_notify ON runs")
    op.execute(f"CREATE TRIGGER runs_due_notify {DUE_WHEN} EXECUTE FUNCTION slack_tutor_notify_work()")
    op.execute("DROP FUNCTION IF EXISTS slack_tutor_notify_due()")
