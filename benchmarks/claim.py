"""The run-poller's queries on a big table: claim, rescue and prune with 1 M finished runs (PostgreSQL).

    uv run python -m benchmarks.claim [--postgres postgresql://postgres@127.0.0.1/test]
                                      [--finished 1000000] [--active 200] [--rounds 200]

Fills a fresh database with `--finished` finished runs (100 per thread, as a long-lived workspace
leaves them) and `--active` due questions, then times `claim_due_runs` (32 at a time, rolled back so
every round sees the same queue), `dead_owners` and one retention batch, with the partial indexes
of migration 0006 and without them (dropped: the table as it was before). Prints p50/p99 and the
EXPLAIN ANALYZE plan of each query. "next in thread" is the hand-over of a finishing worker
to its thread's next question (`claim_next_in_thread`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from benchmarks.events import percentile
from db import leases, repo
from db.migrate import upgrade
from db.models import Run, utcnow
from db.session import make_engine, make_sessionmaker

PARTIAL_INDEXES = ("ix_runs_active", "ix_runs_active_thread", "ix_runs_finished")


async def fill(engine: AsyncEngine, *, finished: int, active: int) -> None:
    threads = max(1, finished // 100)
    async with engine.begin() as connection:
        await connection.exec_driver_sql(
            "INSERT INTO tutor_threads (team_id, channel_id, thread_ts, state, created_at, updated_at) "  # noqa: S608
            "SELECT 'T1', 'C' || mod(g, 500), 'old-' || g, 'active', now(), now() "
            f"FROM generate_series(1, {threads + active}) AS g"
        )
        await connection.exec_driver_sql(
            "INSERT INTO runs (run_uuid, thread_id, team_id, channel_id, message_ts, user_id, text, kind, "  # noqa: S608
            "status, attempts, next_attempt_at, created_at, finished_at) "
            f"SELECT md5(g::text), 1 + mod(g, {threads}), 'T1', 'C1', 'f-' || g, 'U1', "
            "'What is ' || g || ' squared?', 'answer', 'done', 0, now() - interval '40 days', "
            "now() - interval '40 days' + (g || ' seconds')::interval, "
            "now() - interval '40 days' + (g || ' seconds')::interval "
            f"FROM generate_series(1, {finished}) AS g"
        )
        # The queue: one due question in each of `active` fresh threads, and as many waiting runs
        # (released between two polls, due in a second) that a claim must skip.
        await connection.exec_driver_sql(
            "INSERT INTO runs (run_uuid, thread_id, team_id, channel_id, message_ts, user_id, text, kind, "  # noqa: S608
            "status, attempts, next_attempt_at, created_at) "
            f"SELECT md5('a' || g), {threads} + g, 'T1', 'C1', 'a-' || g, 'U1', 'Help?', 'answer', "
            "CASE WHEN mod(g, 2) = 0 THEN 'queued' ELSE 'polling' END, 0, "
            "CASE WHEN mod(g, 2) = 0 THEN now() ELSE now() + interval '1 hour' END, now() "
            f"FROM generate_series(1, {active}) AS g"
        )
        await connection.exec_driver_sql("ANALYZE")


async def timed(rounds: int, query: Callable[[AsyncSession], Awaitable[Any]], sessions: Any) -> list[float]:
    durations: list[float] = []
    for _ in range(rounds):
        async with sessions() as session:
            began = time.perf_counter()
            await query(session)
            durations.append(time.perf_counter() - began)
            await session.rollback()
    return durations


async def plan_of(engine: AsyncEngine, sessions: Any, query: Callable[[AsyncSession], Awaitable[Any]]) -> str:
    """EXPLAIN ANALYZE of the first statement `query` sends."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if not seen:
            seen.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with sessions() as session:
            await query(session)
            await session.rollback()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    statement, parameters = seen[0]
    async with engine.connect() as connection:
        rows = await connection.exec_driver_sql(f"EXPLAIN (ANALYZE, COSTS OFF) {statement}", parameters)
        plan = "\n".join(f"    {row[0]}" for row in rows)
        await connection.rollback()
    return plan


async def measure(engine: AsyncEngine, rounds: int, label: str, *, chained_thread: int) -> None:
    sessions = make_sessionmaker(engine)
    now = utcnow()
    # A run just finished in a thread whose next question is due (migration 0012's hand-over).
    finishing = Run(id=-1, thread_id=chained_thread)

    async def chained(session: AsyncSession) -> Any:
        return await leases.claim_next_in_thread(
            session, finishing, owner="bench", now=utcnow(), lease_until=utcnow()
        )

    async def claim(session: AsyncSession) -> Any:
        return await leases.claim_due_runs(
            session, owner="bench", now=utcnow(), lease_until=utcnow(), limit=32
        )

    async def rescue(session: AsyncSession) -> Any:
        return await leases.dead_owners(session, me="bench", now=now)

    async def prune(session: AsyncSession) -> Any:
        return await repo.prune_finished_runs(session, before=now, limit=500)

    print(f"{label}:")
    for name, query, count in (
        ("claim 32", claim, rounds),
        ("next in thread", chained, rounds),
        ("rescue scan", rescue, rounds),
        ("prune 500", prune, 20),
    ):
        durations = await timed(count, query, sessions)
        p50, p99 = (percentile(durations, p) * 1000 for p in (50, 99))
        print(f"  {name:<14} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   ({count} rounds)")
        print(await plan_of(engine, sessions, query))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1/test")
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--active", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    name = f"bench_claim_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.postgres)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = args.postgres.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url + "?command_timeout=900")  # filling 1 M rows outlasts the 30 s default
    try:
        await asyncio.to_thread(upgrade, url)
        began = time.perf_counter()
        await fill(engine, finished=args.finished, active=args.active)
        filled = time.perf_counter() - began
        print(f"{args.finished:,} finished runs and {args.active} active ones in {filled:.0f} s")
        # fill(): the active threads come after the finished ones; an even one has a due question.
        chained_thread = max(1, args.finished // 100) + 2
        await measure(
            engine, args.rounds, "with the partial indexes (migration 0006)", chained_thread=chained_thread
        )
        async with engine.begin() as connection:
            for index in PARTIAL_INDEXES:
                await connection.exec_driver_sql(f"DROP INDEX {index}")
            await connection.exec_driver_sql("ANALYZE runs")
        await measure(
            engine, args.rounds, "without them (the indexes before 0006)", chained_thread=chained_thread
        )
    finally:
        await engine.dispose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
