"""Instant hand-off on PostgreSQL: work stored by any process wakes the workers (LISTEN/NOTIFY),
polling stays the fallback, and the LISTEN connection comes back by itself after a cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from db.migrate import upgrade
from db.models import Cleanup, Run, utcnow
from db.notify import WorkListener
from tests.fakes import FakeOpenAI, wait_for
from tests.rows import new_run, new_thread
from tests.slack_payloads import as_json, mention, new_ts
from tests.tcp_proxy import TcpProxy
from tests.test_rescue import Processes, processes  # noqa: F401  (fixture)

#: Their databases start migrated (a copy of conftest's template); their own upgrade finds nothing to do.
pytestmark = [pytest.mark.postgres, pytest.mark.migrated_postgres]

#: Far longer than any hand-off may take: a worker that waited for its poll would miss it.
IDLE_POLL = "30"


class Woken:
    """Counts on_work() calls and lets a test wait for the next ones."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1

    async def more_than(self, count: int, within: float = 5.0) -> None:
        await wait_for(lambda: self.count > count, timeout=within, message=f"a wake-up after {count}")


@pytest_asyncio.fixture
async def database(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    await asyncio.to_thread(upgrade, postgres_url)
    engine = create_async_engine(postgres_url, poolclass=NullPool)
    yield engine
    await engine.dispose()


async def _listening(url: str) -> tuple[WorkListener, Woken, asyncio.Task[None]]:
    woken = Woken()
    listener = WorkListener(url, woken)
    task = asyncio.create_task(listener.run_forever())
    await wait_for(listener.listening.is_set, timeout=10.0, message="LISTEN in effect")
    return listener, woken, task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _new_run(engine: AsyncEngine) -> int:
    return await new_run(engine, await new_thread(engine))


async def _set(engine: AsyncEngine, run_id: int, **values: object) -> None:
    async with engine.begin() as connection:
        await connection.execute(update(Run).where(Run.id == run_id).values(**values))


async def _queue_cleanup(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            insert(Cleanup).values(kind="file", object_id="file-x", next_attempt_at=utcnow())
        )


async def test_work_becoming_claimable_notifies_and_waiting_work_does_not(
    database: AsyncEngine, postgres_url: str
) -> None:
    listener, woken, task = await _listening(postgres_url)
    try:
        await woken.more_than(0)  # it looks once as soon as it listens
        seen = woken.count

        run_id = await _new_run(database)  # a question stored (by any process)
        await woken.more_than(seen)
        seen = woken.count

        await _set(database, run_id, lease_owner="worker-a", lease_expires_at=utcnow())  # claimed
        # Released to wait for its next poll (next attempt in the future): nobody to wake...
        await _set(
            database,
            run_id,
            status="polling",
            lease_owner=None,
            lease_expires_at=None,
            next_attempt_at=utcnow().replace(year=utcnow().year + 1),
        )
        # ...which shows as the next wake-up being the clean-up's, not two (notifications of
        # committed transactions arrive in commit order).
        await _queue_cleanup(database)
        await woken.more_than(seen)
        await _queue_cleanup(database)
        await woken.more_than(seen + 1)
        assert woken.count == seen + 2
        seen = woken.count

        # Released and due (a rescued or handed-back run) wakes.
        await _set(database, run_id, lease_owner="worker-a")
        await _set(database, run_id, lease_owner=None, next_attempt_at=utcnow())
        await woken.more_than(seen)
        assert listener.notifications >= 4
    finally:
        await _stop(task)


async def _thread_of(engine: AsyncEngine, count: int) -> list[int]:
    """A thread with `count` queued questions, in the order they were asked."""
    thread = await new_thread(engine)
    runs = [await new_run(engine, thread) for _ in range(count)]
    for position, run_id in enumerate(runs):
        await _set(engine, run_id, message_ts=f"1700000000.{position:06d}{run_id}")
    return runs


async def test_a_finished_run_wakes_the_workers_only_for_a_question_nobody_holds(
    database: AsyncEngine, postgres_url: str
) -> None:
    chained = await _thread_of(database, 2)
    last = await _thread_of(database, 1)
    waiting = await _thread_of(database, 2)
    _listener, woken, task = await _listening(postgres_url)
    try:
        await woken.more_than(0)  # it looks once as soon as it listens
        seen = woken.count
        soon = utcnow() + timedelta(seconds=60)

        # The finishing worker leased its thread's next question in the same commit: nobody to wake.
        async with database.begin() as connection:
            await connection.execute(
                update(Run).where(Run.id == chained[1]).values(lease_owner="worker-a", lease_expires_at=soon)
            )
            await connection.execute(
                update(Run)
                .where(Run.id == chained[0])
                .values(status="done", finished_at=utcnow(), lease_owner=None, lease_expires_at=None)
            )
        # The last question of its thread: nothing left to claim.
        await _set(database, last[0], status="done", finished_at=utcnow())
        # Shown by commit order: the next wake-up is the clean-up's, and there is one.
        await _queue_cleanup(database)
        await woken.more_than(seen)
        assert woken.count == seen + 1
        seen = woken.count

        # A next question nobody holds: the workers are woken to claim it.
        await _set(database, waiting[0], status="done", finished_at=utcnow())
        await woken.more_than(seen)
    finally:
        await _stop(task)


async def test_the_listen_connection_comes_back_after_a_cut(database: AsyncEngine, postgres_url: str) -> None:
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        through_proxy = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        assert through_proxy != postgres_url
        listener, woken, task = await _listening(through_proxy)
        try:
            await proxy.cut()
            await wait_for(lambda: not listener.listening.is_set(), timeout=10.0, message="the cut noticed")
            seen = woken.count
            await proxy.restore()
            await wait_for(listener.listening.is_set, timeout=10.0, message="LISTEN again")
            await woken.more_than(seen)  # it looks for what was stored meanwhile
            seen = woken.count
            await _new_run(database)
            await woken.more_than(seen)
        finally:
            await _stop(task)


async def test_a_blackholed_listen_connection_is_noticed(database: AsyncEngine, postgres_url: str) -> None:
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        through_proxy = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        listener, _woken, task = await _listening(through_proxy)
        try:
            await proxy.cut(blackhole=True)  # no reset: only the liveness check can tell
            await wait_for(
                lambda: not listener.listening.is_set(), timeout=15.0, message="the black hole noticed"
            )
        finally:
            await _stop(task)


async def test_a_question_stored_by_web_wakes_a_separate_worker_at_once(
    processes: Processes,  # noqa: F811
    database: AsyncEngine,
    postgres_url: str,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    web = await processes.start_web("web", postgres_url)
    worker = await processes.start("worker", postgres_url, TUTOR_POLL_INTERVAL=IDLE_POLL)
    await processes.wait_logged(worker, "listening for new work")
    await processes.wait_logged(worker, "run-poller", "started")
    assert await processes.send(web, as_json(mention("What is 6 x 7?", ts=new_ts()))) == 200
    acked = asyncio.get_running_loop().time()
    # The worker idles 15 s between polls: only the notification can bring it this soon.
    await wait_for(
        lambda: fake_openai.calls("POST /v1/responses$"), timeout=5.0, message="the worker's create"
    )
    assert asyncio.get_running_loop().time() - acked < 5.0
