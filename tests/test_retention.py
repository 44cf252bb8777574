"""Retention: only what is old is pruned (clock injected), in batches, by one worker at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.retention import LOCK_KEY, Retention
from db.migrate import upgrade
from db.models import Cleanup, Delivery, Run, ThreadFile, utcnow
from db.session import make_engine
from tests.rows import new_run, new_thread

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=utcnow().tzinfo)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=10)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest_asyncio.fixture
async def engine(backend_url: str) -> AsyncIterator[AsyncEngine]:
    await asyncio.to_thread(upgrade, backend_url)
    engine = make_engine(backend_url)
    yield engine
    await engine.dispose()


async def _run(engine: AsyncEngine, thread_id: int, *, status: str, at: datetime, text: str = "Q") -> int:
    return await new_run(engine, thread_id, status=status, at=at, text=text, delivered=True)


async def _count(engine: AsyncEngine, model: Any, *where: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_only_what_is_old_is_pruned_in_batches(engine: AsyncEngine) -> None:
    thread = await new_thread(engine)
    old = [await _run(engine, thread, status="done", at=OLD, text=f"old secret {i}") for i in range(5)]
    old.append(await _run(engine, thread, status="failed", at=OLD))
    recent = await _run(engine, thread, status="done", at=RECENT)
    # Old but unfinished (a question still being answered, however long ago it came): kept.
    stuck = await _run(engine, thread, status="polling", at=OLD)
    async with engine.begin() as connection:
        await connection.execute(
            insert(ThreadFile).values(
                thread_id=thread,
                run_id=old[0],
                team_id="T1",
                slack_file_id="F1",
                name="data.csv",
                slack_meta={},
            )
        )
        await connection.execute(
            insert(Cleanup),
            [
                {"kind": "file", "object_id": "file-old", "next_attempt_at": OLD, "done_at": OLD},
                {"kind": "file", "object_id": "file-new", "next_attempt_at": RECENT, "done_at": RECENT},
                {"kind": "file", "object_id": "file-pending", "next_attempt_at": OLD, "done_at": None},
            ],
        )

    deletes: list[str] = []

    def count_deletes(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM RUNS"):
            deletes.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count_deletes)
    try:
        pruned = await Retention(engine, days=30, clock=lambda: NOW, batch=2).prune()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count_deletes)

    assert (pruned.runs, pruned.cleanups, pruned.ran) == (6, 1, True)
    assert len(deletes) == 4  # 2 + 2 + 2, then an empty batch says it is done
    assert await _count(engine, Run, Run.id.in_(old)) == 0
    assert await _count(engine, Run, Run.text.like("old secret%")) == 0
    assert await _count(engine, Run, Run.id.in_([recent, stuck])) == 2
    assert await _count(engine, Delivery, Delivery.run_id.in_(old)) == 0  # cascaded
    assert await _count(engine, Delivery, Delivery.run_id.in_([recent, stuck])) == 2
    assert await _count(engine, ThreadFile, ThreadFile.run_id.is_(None)) == 1  # the file stays, unlinked
    objects = await _count(engine, Cleanup, Cleanup.object_id.in_(["file-new", "file-pending"]))
    assert objects == 2 and await _count(engine, Cleanup) == 2

    # Idempotent: a second round finds nothing.
    again = await Retention(engine, days=30, clock=lambda: NOW, batch=2).prune()
    assert (again.runs, again.cleanups) == (0, 0)


@pytest.mark.postgres
async def test_one_worker_at_a_time_prunes(postgres_url: str) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    engine = make_engine(postgres_url)
    try:
        thread = await new_thread(engine)
        await _run(engine, thread, status="done", at=OLD)
        async with engine.connect() as other_worker:
            await other_worker.execute(
                text("SELECT pg_advisory_lock(hashtextextended(:key, 0))"), {"key": LOCK_KEY}
            )
            await other_worker.commit()
            skipped = await Retention(engine, days=30, clock=lambda: NOW).prune()
            assert not skipped.ran and skipped.runs == 0
            assert await _count(engine, Run) == 1
            await other_worker.execute(
                text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"), {"key": LOCK_KEY}
            )
            await other_worker.commit()
        done = await Retention(engine, days=30, clock=lambda: NOW).prune()
        assert done.ran and done.runs == 1
        # The lock is released after a round: the next round (of any worker) can run.
        assert (await Retention(engine, days=30, clock=lambda: NOW).prune()).ran
    finally:
        await engine.dispose()
