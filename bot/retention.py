"""Retention: what the tutor keeps is deleted TUTOR_RETENTION_DAYS after it was last used, in the
database and at OpenAI.

Each round, in this order:
1. Threads with nothing since the cut-off (no question, none still being answered) are forgotten
   as a reset forgets them (their conversation with its items, sandbox, files and thread-scoped
   vector store are queued for deletion at OpenAI) and their runs are deleted with their stored
   responses. The thread row stays, holding nothing, so a follow-up there starts fresh.
2. Finished runs older than the cut-off in threads still in use are deleted (question text,
   stream state, delivery rows), after queueing their stored responses and their turns in the
   thread's conversation for deletion: the row is the only record of where those are.
3. Clean-ups OpenAI confirmed before the cut-off are deleted.

OpenAI objects are deleted by the worker's clean-up loop (`bot.poller`), retried with backoff,
a 404 counting as gone. Channel libraries are course material: kept until removed. Deleting
happens in batches, each its own short transaction, so claims and acks never wait behind a long
delete; on PostgreSQL one worker at a time prunes (a session advisory lock: the others skip the
round).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from db import repo
from db.models import utcnow

log = logging.getLogger(__name__)

#: The advisory lock that makes one worker at a time prune (PostgreSQL).
LOCK_KEY = "slack-tutor:retention"
#: Rows per transaction: small enough that a batch holds its locks for milliseconds.
BATCH = 500
#: Threads per transaction (each is a few queries and clean-up rows).
THREAD_BATCH = 50
#: Seconds between rounds. The first round comes within a minute of start (at random, so workers
#: started together do not all try at once).
EVERY = 3600.0
FIRST_WITHIN = 60.0


class _Prune(Protocol):
    async def __call__(self, connection: AsyncConnection, *, before: datetime, limit: int) -> int: ...


@dataclass(frozen=True)
class Pruned:
    #: Threads forgotten whole.
    threads: int = 0
    #: Runs deleted (those of the forgotten threads included).
    runs: int = 0
    cleanups: int = 0
    #: Usage rows (token counts, no content) past their own, longer cut-off.
    usage: int = 0
    #: Ratings (and what people said was wrong) last changed before the cut-off.
    feedback: int = 0
    #: False when another worker held the lock (PostgreSQL): this round was theirs.
    ran: bool = True


class Retention:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        days: float,
        clock: Callable[[], datetime] = utcnow,
        batch: int = BATCH,
        usage_days: float | None = None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._wake = wake
        self._keep = timedelta(days=days)
        self._keep_usage = timedelta(days=usage_days) if usage_days is not None else None
        self._clock = clock
        self._batch = batch
        self._postgres = engine.dialect.name == "postgresql"

    async def prune(self) -> Pruned:
        """Delete everything older than the cut-off, batch by batch; one worker at a time."""
        cutoff = self._clock() - self._keep
        async with self._engine.connect() as connection:
            if self._postgres and not await _try_lock(connection):
                return Pruned(ran=False)
            try:
                threads, in_threads = await self._expire_threads(connection, cutoff)
                runs = await self._in_batches(connection, repo.prune_finished_runs, cutoff)
                cleanups = await self._in_batches(connection, repo.prune_finished_cleanups, cutoff)
                feedback = await self._in_batches(connection, repo.prune_feedback, cutoff)
                usage = 0
                if self._keep_usage is not None:
                    usage_cutoff = self._clock() - self._keep_usage
                    usage = await self._in_batches(connection, repo.prune_usage_records, usage_cutoff)
            finally:
                if self._postgres:
                    await _unlock(connection)
        if threads or runs:
            self._wake()  # the clean-up loop deletes what was queued at OpenAI
        if threads or runs or cleanups:
            log.info(
                "retention: forgot %d threads, deleted %d finished runs and %d clean-ups older than %s",
                threads,
                in_threads + runs,
                cleanups,
                cutoff.date().isoformat(),
            )
        if usage:
            log.info("retention: deleted %d usage rows", usage)
        return Pruned(
            threads=threads, runs=in_threads + runs, cleanups=cleanups, usage=usage, feedback=feedback
        )

    async def _expire_threads(self, connection: AsyncConnection, cutoff: datetime) -> tuple[int, int]:
        threads = runs = 0
        while True:
            # On the round's connection: SQLite's pool has one.
            async with AsyncSession(bind=connection, expire_on_commit=False) as session, session.begin():
                batch, batch_runs = await repo.expire_threads(session, before=cutoff, limit=THREAD_BATCH)
            threads, runs = threads + batch, runs + batch_runs
            if batch < THREAD_BATCH:
                return threads, runs
            await asyncio.sleep(0)

    async def _in_batches(self, connection: AsyncConnection, delete: _Prune, cutoff: datetime) -> int:
        total = 0
        while True:
            async with connection.begin():
                deleted = await delete(connection, before=cutoff, limit=self._batch)
            total += deleted
            if deleted < self._batch:
                return total
            await asyncio.sleep(0)  # let acks and claims in between batches

    async def run_forever(self, *, first_within: float = FIRST_WITHIN) -> None:
        await asyncio.sleep(random.uniform(0.0, first_within))  # noqa: S311 - jitter, not security
        while True:
            try:
                await self.prune()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("retention: database unavailable (%s); trying again later", type(exc).__name__)
            await asyncio.sleep(EVERY)


async def _try_lock(connection: AsyncConnection) -> bool:
    locked = await connection.scalar(
        text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))"), {"key": LOCK_KEY}
    )
    await connection.commit()
    return bool(locked)


async def _unlock(connection: AsyncConnection) -> None:
    with contextlib.suppress(SQLAlchemyError, OSError):
        await connection.execute(
            text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"), {"key": LOCK_KEY}
        )
        await connection.commit()
