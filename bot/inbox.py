"""The durable inbox: questions are written to the database before Slack gets its ack.

Concurrent requests share one transaction ("group commit"): the first request to arrive
starts a write, and whatever arrives meanwhile goes into the next one. Every caller still
waits for the commit that holds its question, so nothing is acked before it is stored; the
database sees a handful of statements per batch instead of per event.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo

log = logging.getLogger(__name__)

MAX_BATCH = 500


@dataclass(frozen=True)
class Question:
    """A human Slack message that may be for the tutor."""

    team_id: str
    channel_id: str
    message_ts: str
    #: The tutor thread's key: the thread root's ts, or "" for the top level of a DM.
    thread_key: str
    #: Where the answer goes: the thread root, or None for the top level of a DM.
    reply_thread_ts: str | None
    user_id: str
    text: str
    is_mention: bool
    is_dm: bool
    event_id: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.team_id, self.channel_id, self.message_ts)

    @property
    def thread(self) -> repo.ThreadKey:
        return (self.team_id, self.channel_id, self.thread_key)

    @property
    def starts_thread(self) -> bool:
        """Mentions and DMs open a tutor thread; other messages only join an existing one."""
        return self.is_mention or self.is_dm


class Inbox:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, default_profile: str) -> None:
        self._sessions = sessions
        self._default_profile = default_profile
        self._pending: list[tuple[Question, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def store(self, question: Question) -> bool:
        """Durably queue a run for `question`; False if it isn't for the tutor or is a duplicate."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((question, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="inbox-writer")
        return await future

    async def _write_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                stored = await self._write(q for q, _ in batch)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for question, future in batch:
                if not future.done():
                    future.set_result(question.key in stored)

    async def _write(self, questions: Iterable[Question]) -> set[tuple[str, str, str]]:
        unique: dict[tuple[str, str, str], Question] = {}
        for question in questions:
            unique.setdefault(question.key, question)
        async with self._sessions.begin() as session:
            threads = await repo.thread_ids(session, keys={q.thread for q in unique.values()})
            missing = {q.thread for q in unique.values() if q.starts_thread and q.thread not in threads}
            if missing:
                profile = await repo.get_profile(session, slug=self._default_profile)
                await repo.create_threads(session, keys=missing, profile_id=profile.id if profile else None)
                threads.update(await repo.thread_ids(session, keys=missing))
            rows = [
                {
                    "run_uuid": str(uuid.uuid4()),
                    "thread_id": threads[q.thread],
                    "team_id": q.team_id,
                    "channel_id": q.channel_id,
                    "message_ts": q.message_ts,
                    "reply_thread_ts": q.reply_thread_ts,
                    "user_id": q.user_id,
                    "text": q.text,
                    "event_id": q.event_id,
                }
                for q in unique.values()
                if q.thread in threads
            ]
            return await repo.insert_runs(session, rows=rows)
