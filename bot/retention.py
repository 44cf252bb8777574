"""Retention of operational rows: finished runs (with their question text) and their delivery rows,
and finished clean-ups, are deleted once older than TUTOR_RETENTION_DAYS.

The database stays bounded however long the tutor runs. Deleting happens in batches, each its own
short transaction, so claims and acks never wait behind a long delete; on PostgreSQL one worker
at a time prunes (a session advisory lock: the others skip the round). What is deleted at OpenAI,
and when, is the workspace-data job's (conversations, files): this one only touches rows.
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
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db import repo
from db.models import utcnow

log = logging.getLogger(__name__)

#: The advisory lock that makes one worker at a time prune (PostgreSQL).
LOCK_KEY = "slack-tutor:retention"
#: Rows per transaction: small enough that a batch holds its locks for milliseconds.
BATCH = 500
#: Seconds between rounds. The first round comes within a minute of start (at random, so workers
#: started together do not all try at once).
EVERY = 3600.0
FIRST_WITHIN = 60.0


class _Prune(Protocol):
    async def __call__(self, connection: AsyncConnection, *, before: datetime, limit: int) -> int: ...


@dataclass(frozen=True)
class Pruned:
    runs: int = 0
    cleanups: int = 0
    #: Usage rows (token counts, no content) past their own, longer cut-off.
    usage: int = 0
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
    ) -> None:
        self._engine = engine
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
                runs = await self._in_batches(connection, repo.prune_finished_runs, cutoff)
                cleanups = await self._in_batches(connection, repo.prune_finished_cleanups, cutoff)
                usage = 0
                if self._keep_usage is not None:
                    usage_cutoff = self._clock() - self._keep_usage
                    usage = await self._in_batches(connection, repo.prune_usage_records, usage_cutoff)
            finally:
                if self._postgres:
                    await _unlock(connection)
        if runs or cleanups:
            log.info(
                "retention: deleted %d finished runs and %d clean-ups older than %s",
                runs,
                cleanups,
                cutoff.date().isoformat(),
            )
        if usage:
            log.info("retention: deleted %d usage rows", usage)
        return Pruned(runs=runs, cleanups=cleanups, usage=usage)

    async def _in_batches(self, connection: AsyncConnection, delete: _Prune, cutoff: datetime) -> int:
        total = 0
        while True:
            async with connection.begin():
                deleted = await delete(connection, before=cutoff, limit=self._batch)
            total += deleted
            if deleted < self._batch:
                return total
            await asyncio.sleep(0)  # let acks and claims in between batches

    async def run_forever(self) -> None:
        await asyncio.sleep(random.uniform(0.0, FIRST_WITHIN))  # noqa: S311 - jitter, not security
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
