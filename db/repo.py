"""Query functions. Keyword-only arguments; they never commit: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from db.models import Delivery, Profile, Run, TutorThread

#: Statuses of a run that still needs a worker.
ACTIVE_STATUSES = ("queued", "creating", "unknown", "polling", "replying")
FINISHED_STATUSES = ("done", "failed")


def _insert(session: AsyncSession, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def get_profile(session: AsyncSession, *, slug: str) -> Profile | None:
    return await session.scalar(select(Profile).where(Profile.slug == slug))


async def find_thread(
    session: AsyncSession, *, team_id: str, channel_id: str, thread_ts: str
) -> TutorThread | None:
    return await session.scalar(
        select(TutorThread).where(
            TutorThread.team_id == team_id,
            TutorThread.channel_id == channel_id,
            TutorThread.thread_ts == thread_ts,
        )
    )


ThreadKey = tuple[str, str, str]


async def thread_ids(session: AsyncSession, *, keys: Collection[ThreadKey]) -> dict[ThreadKey, int]:
    """Ids of the tutor threads with these (team, channel, thread_ts) keys that exist."""
    if not keys:
        return {}
    rows = await session.execute(
        select(TutorThread.team_id, TutorThread.channel_id, TutorThread.thread_ts, TutorThread.id).where(
            tuple_(TutorThread.team_id, TutorThread.channel_id, TutorThread.thread_ts).in_(list(keys))
        )
    )
    return {(team, channel, ts): thread_id for team, channel, ts, thread_id in rows}


async def create_threads(
    session: AsyncSession, *, keys: Collection[ThreadKey], profile_id: int | None
) -> None:
    """Create the threads that don't exist yet; concurrent creators of the same key are harmless."""
    if keys:
        await session.execute(
            _insert(session, TutorThread)
            .values(
                [
                    {"team_id": team, "channel_id": channel, "thread_ts": ts, "profile_id": profile_id}
                    for team, channel, ts in keys
                ]
            )
            .on_conflict_do_nothing(index_elements=["team_id", "channel_id", "thread_ts"])
        )


async def insert_runs(session: AsyncSession, *, rows: Sequence[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Insert question runs; return the (team, channel, message_ts) of those that were new."""
    if not rows:
        return set()
    result = await session.execute(
        _insert(session, Run)
        .values(list(rows))
        .on_conflict_do_nothing(index_elements=["team_id", "channel_id", "message_ts"])
        .returning(Run.team_id, Run.channel_id, Run.message_ts)
    )
    return {(team, channel, ts) for team, channel, ts in result}


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
    candidates = (await session.scalars(query)).all()
    claimed: list[int] = []
    for run_id in candidates:
        result = await session.execute(
            update(Run)
            .where(
                Run.id == run_id,
                or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < now),
            )
            .values(lease_owner=owner, lease_expires_at=lease_until)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) == 1:
            claimed.append(run_id)
    if not claimed:
        return []
    return list((await session.scalars(select(Run).where(Run.id.in_(claimed)))).all())


async def extend_lease(session: AsyncSession, *, run_id: int, owner: str, lease_until: datetime) -> bool:
    result = await session.execute(
        update(Run)
        .where(Run.id == run_id, Run.lease_owner == owner)
        .values(lease_expires_at=lease_until)
        .execution_options(synchronize_session=False)
    )
    return getattr(result, "rowcount", 0) == 1


async def set_conversation_once(session: AsyncSession, *, thread_id: int, conversation_id: str) -> str:
    """Store the thread's conversation unless another worker got there first; return the winner."""
    await session.execute(
        update(TutorThread)
        .where(TutorThread.id == thread_id, TutorThread.conversation_id.is_(None))
        .values(conversation_id=conversation_id)
        .execution_options(synchronize_session=False)
    )
    winner = await session.scalar(select(TutorThread.conversation_id).where(TutorThread.id == thread_id))
    assert winner is not None
    return winner


async def get_delivery(session: AsyncSession, *, run_id: int, key: str) -> Delivery | None:
    return await session.scalar(select(Delivery).where(Delivery.run_id == run_id, Delivery.key == key))


async def start_delivery(session: AsyncSession, *, run_id: int, key: str) -> tuple[Delivery, bool]:
    """The delivery row for (run, key), and whether this call created it (False: an earlier
    attempt may already have reached Slack)."""
    result = await session.execute(
        _insert(session, Delivery)
        .values(run_id=run_id, key=key, state="pending")
        .on_conflict_do_nothing(index_elements=["run_id", "key"])
        .returning(Delivery.id)
    )
    created = result.scalar_one_or_none() is not None
    delivery = await get_delivery(session, run_id=run_id, key=key)
    assert delivery is not None
    return delivery, created


async def runs_of_thread(session: AsyncSession, *, thread_id: int) -> Sequence[Run]:
    query = select(Run).where(Run.thread_id == thread_id).order_by(Run.message_ts)
    return (await session.scalars(query)).all()
