"""Who holds which run: leases, heart-beats, and knowing (not guessing) that a worker is dead.

A lease is the safety net: a worker that stops heart-beating loses its runs when the lease
expires. On PostgreSQL each worker also holds a session-level advisory lock keyed on its owner
id for as long as it lives; the server drops the lock the moment the worker's connection dies
(kill -9, a crash, a lost host), so a rescuer can hand that worker's runs over at once.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import and_, bindparam, exists, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from db.models import Run, RunStatus

#: Statuses of a run that still needs a worker.
ACTIVE_STATUSES = tuple(
    str(status)
    for status in (
        RunStatus.QUEUED,
        RunStatus.CREATING,
        RunStatus.UNKNOWN,
        RunStatus.STREAMING,
        RunStatus.POLLING,
        RunStatus.REPLYING,
    )
)
_LOCK_KEY = "hashtextextended(:owner, 0)"


async def extend_leases(
    session: AsyncSession, *, run_ids: Collection[int], owner: str, lease_until: datetime
) -> int:
    """Heart-beat: extend the leases `owner` still holds on these runs; returns how many."""
    if not run_ids:
        return 0
    result = await session.execute(
        update(Run)
        .where(Run.id.in_(list(run_ids)), Run.lease_owner == owner)
        .values(lease_expires_at=lease_until)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def lost_leases(session: AsyncSession, *, run_ids: Collection[int], owner: str) -> set[int]:
    """Which of these runs `owner` no longer holds (taken over, or ended for it: an uninstall)."""
    if not run_ids:
        return set()
    held = await session.scalars(select(Run.id).where(Run.id.in_(list(run_ids)), Run.lease_owner == owner))
    return set(run_ids) - set(held.all())


async def release_leases(
    session: AsyncSession, *, owners: Collection[str] | None = None, run_ids: Collection[int] | None = None
) -> int:
    """Make the runs of these owners (of every owner when None) claimable now, all of them or only
    `run_ids`; returns how many."""
    if (owners is not None and not owners) or (run_ids is not None and not run_ids):
        return 0
    query = update(Run).where(Run.lease_owner.is_not(None))
    if owners is not None:
        query = query.where(Run.lease_owner.in_(list(owners)))
    if run_ids is not None:
        query = query.where(Run.id.in_(list(run_ids)))
    result = await session.execute(
        query.values(lease_owner=None, lease_expires_at=None).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def hold_liveness_lock(connection: AsyncConnection, *, owner: str) -> None:
    """PostgreSQL: hold `owner`'s advisory lock for as long as `connection` lives."""
    await connection.execute(text(f"SELECT pg_advisory_lock({_LOCK_KEY})"), {"owner": owner})
    await connection.commit()


async def dead_owners(session: AsyncSession, *, me: str, now: datetime) -> list[str]:
    """PostgreSQL: owners of unexpired leases whose liveness lock nobody holds any more."""
    owners = (
        await session.scalars(
            select(Run.lease_owner)
            .where(
                Run.lease_owner.is_not(None),
                Run.lease_owner != me,
                Run.lease_expires_at > now,
                Run.status.in_(ACTIVE_STATUSES),
            )
            .group_by(Run.lease_owner)
        )
    ).all()
    dead: list[str] = []
    for owner in owners:
        assert owner is not None
        # A transaction-level try-lock conflicts with the owner's session lock while it lives.
        free = await session.scalar(select(func.pg_try_advisory_xact_lock(func.hashtextextended(owner, 0))))
        if free:
            dead.append(owner)
    return dead


async def claim_due_runs(
    session: AsyncSession, *, owner: str, now: datetime, lease_until: datetime, limit: int
) -> list[Run]:
    """Lease up to `limit` due runs, at most one per thread (the oldest unfinished question).

    On PostgreSQL candidates are locked with FOR UPDATE SKIP LOCKED so workers don't contend;
    on every backend the lease is taken with a compare-and-set UPDATE, which is what makes
    two workers unable to hold the same run.
    """
    earlier = aliased(Run)
    query = (
        select(Run.id)
        .where(
            Run.status.in_(ACTIVE_STATUSES),
            Run.next_attempt_at <= now,
            or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < now),
            ~exists().where(
                and_(
                    earlier.thread_id == Run.thread_id,
                    earlier.status.in_(ACTIVE_STATUSES),
                    earlier.message_ts < Run.message_ts,
                )
            ),
        )
        .order_by(Run.next_attempt_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Run)
    candidates = list((await session.scalars(query)).all())
    if not candidates:
        return []
    # One compare-and-set for the whole batch (a round trip per run cost 0.5 ms each).
    claimed = await session.scalars(
        update(Run)
        .where(Run.id.in_(candidates), or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < now))
        .values(lease_owner=owner, lease_expires_at=lease_until, lease_generation=Run.lease_generation + 1)
        .returning(Run)
        .execution_options(synchronize_session=False)
    )
    return sorted(claimed.all(), key=lambda run: run.next_attempt_at)


async def claim_next_in_thread(
    session: AsyncSession, run: Run, *, owner: str, now: datetime, lease_until: datetime
) -> Run | None:
    """Lease the question after `run` in its thread, if it is due and nobody holds it: the worker
    finishing `run` drives it next, in the commit that finishes `run` (so no claim round, and no
    notification that wakes every worker to look for it; migration 0012).

    `run` is the oldest unfinished question of its thread, so the next one by `message_ts` is the
    one `claim_due_runs` would give out; the lease is the same compare-and-set (a worker that
    leased it meanwhile keeps it: none is returned)."""
    # Not SKIP LOCKED: a row locked for another reason must not let the one after it jump the queue.
    candidate = await session.scalar(_NEXT_IN_THREAD, {"thread_id": run.thread_id, "run_id": run.id})
    if candidate is None:
        return None
    params = {"candidate": candidate, "now": now, "new_owner": owner, "new_until": lease_until}
    claimed = await session.scalars(_LEASE_NEXT, params)
    return claimed.one_or_none()


# Built once (a finish makes both): building them cost as much CPU as running them.
_NEXT_IN_THREAD = (
    select(Run.id)
    .where(
        Run.thread_id == bindparam("thread_id"),
        Run.id != bindparam("run_id"),
        Run.status.in_(ACTIVE_STATUSES),
    )
    .order_by(Run.message_ts)
    .limit(1)
)
_LEASE_NEXT = (
    update(Run)
    .where(
        Run.id == bindparam("candidate"),
        Run.next_attempt_at <= bindparam("now"),
        or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < bindparam("now")),
    )
    .values(
        lease_owner=bindparam("new_owner"),
        lease_expires_at=bindparam("new_until"),
        lease_generation=Run.lease_generation + 1,
    )
    .returning(Run)
    .execution_options(synchronize_session=False)
)


class LeaseLost(Exception):
    """Another worker took the run over (our lease expired, or the run was claimed again since our
    claim): stop touching it, in the database and in Slack."""


async def holds(session: AsyncSession, run: Run) -> bool:
    """Whether `run` is still held under the claim this `run` object came from (owner and
    generation): the fence checked before every Slack call."""
    if run.lease_owner is None:
        return False
    params = {"run_id": run.id, "owner": run.lease_owner, "generation": run.lease_generation}
    return await session.scalar(_HOLDS, params) is not None


#: Built once: the fence runs before every Slack call of every run.
_HOLDS = select(Run.__table__.c.id).where(
    Run.__table__.c.id == bindparam("run_id"),
    Run.__table__.c.lease_owner == bindparam("owner"),
    Run.__table__.c.lease_generation == bindparam("generation"),
)


async def ensure_held(session: AsyncSession, run: Run) -> None:
    """LeaseLost unless `holds`: the fence before a Slack call or a delivery row."""
    if not await holds(session, run):
        raise LeaseLost(run.id)
