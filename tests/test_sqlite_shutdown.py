"""A stopping process never waits on its own SQLite lock: a connection thrown away mid-transaction
(SQLAlchemy invalidates one whose statement was cancelled) gives its write lock back at once."""

from __future__ import annotations

import asyncio
import gc

from sqlalchemy import text

from db.session import make_engine


async def test_a_connection_invalidated_mid_transaction_releases_its_write_lock(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            await connection.begin()  # BEGIN IMMEDIATE: this connection holds the write lock
            raw = (await connection.get_raw_connection()).driver_connection
            assert raw is not None
            # A statement left mid-way, as a cancelled one is: its cursor is still referenced (by a
            # traceback, until the garbage collector runs), so its statement is not finalized.
            cursor = await raw.execute("SELECT id FROM runs UNION ALL SELECT 1 UNION ALL SELECT 2")
            await cursor.fetchone()
            await connection.invalidate()  # what SQLAlchemy does when a CancelledError hits a statement
        async with asyncio.timeout(5):  # SQLite's busy_timeout is 30 s
            async with engine.begin() as other:
                await other.execute(text("UPDATE runs SET attempts = attempts WHERE id = 0"))
    finally:
        del cursor
        gc.collect()  # frees a statement (and its transaction) that the fix did not end
        await engine.dispose()
