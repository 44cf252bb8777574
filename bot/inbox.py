"""The durable inbox: questions are written to the database before Slack gets its ack.

Concurrent requests share one transaction ("group commit"): the first request to arrive
starts a write, and whatever arrives meanwhile goes into the next one. Every caller still
waits for the commit that holds its question, so nothing is acked before it is stored; the
database sees a handful of statements per batch instead of per event.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.files import SharedFile
from db import repo
from db.models import TutorThread

log = logging.getLogger(__name__)

MAX_BATCH = 500
RESET_WORDS = re.compile(
    r"^\W*(reset|start over|start again|start fresh|forget (this|it|everything))\W*$", re.I
)
#: The profile for analyses started by sharing a spreadsheet.
DATA_PROFILE = "data"


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
    files: tuple[SharedFile, ...] = ()

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

    @property
    def is_reset(self) -> bool:
        """`@tutor reset` / "start over" in a thread (or a DM): forget that thread."""
        return (self.is_mention or self.is_dm) and not self.files and RESET_WORDS.match(self.text) is not None

    @property
    def has_data(self) -> bool:
        return any(f.analysable for f in self.files)

    @property
    def may_offer(self) -> bool:
        """A spreadsheet shared in a channel without a mention: offer to analyse it."""
        return not self.starts_thread and self.has_data


@dataclass
class _Plan:
    """What one batch will write."""

    #: key → (state, profile slug)
    new_threads: dict[repo.ThreadKey, tuple[str, str | None]] = field(default_factory=dict)
    activate: set[int] = field(default_factory=set)
    runs: list[tuple[Question, str]] = field(default_factory=list)


class Inbox:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._pending: list[tuple[Question, asyncio.Future[bool]]] = []
        self._profile_ids: dict[str, int] = {}
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
            threads = await repo.threads_by_key(session, keys={q.thread for q in unique.values()})
            plan = await self._plan(session, unique.values(), threads)
            profiles = await self._profiles(session)
            if plan.new_threads:
                await repo.create_threads(
                    session,
                    rows=[
                        {
                            "team_id": t,
                            "channel_id": c,
                            "thread_ts": ts,
                            "profile_id": profiles.get(slug) if slug else None,
                            "state": state,
                        }
                        for (t, c, ts), (state, slug) in plan.new_threads.items()
                    ],
                )
                threads.update(await repo.threads_by_key(session, keys=plan.new_threads.keys()))
            await repo.activate_threads(session, ids=plan.activate)
            data_profile = profiles.get(DATA_PROFILE)
            run_ids = await repo.insert_runs(
                session,
                rows=[
                    run_row(
                        q,
                        kind=kind,
                        thread_id=threads[q.thread].id,
                        profile_id=data_profile if q.has_data else None,
                    )
                    for q, kind in plan.runs
                ],
            )
            await repo.insert_thread_files(
                session,
                rows=[
                    _file_row(f, q, threads[q.thread].id, run_ids[q.key])
                    for q, _ in plan.runs
                    if q.key in run_ids
                    for f in q.files
                ],
            )
            return set(run_ids)

    async def _plan(
        self, session: AsyncSession, questions: Iterable[Question], threads: dict[repo.ThreadKey, TutorThread]
    ) -> _Plan:
        plan = _Plan()
        questions = list(questions)
        offers = [q for q in questions if q.may_offer and q.thread not in threads]
        auto = await repo.auto_channels(session, channels={(q.team_id, q.channel_id) for q in offers})
        known = await repo.known_files(session, files={(q.team_id, f.id) for q in offers for f in q.files})
        for q in questions:
            thread = threads.get(q.thread)
            kind = "reset" if q.is_reset else "answer"
            if thread is not None and thread.state == "active":
                plan.runs.append((q, kind))
            elif q.starts_thread or (q.may_offer and (q.team_id, q.channel_id) in auto):
                if thread is None:
                    plan.new_threads[q.thread] = ("active", self._profile_for(q))
                else:
                    plan.activate.add(thread.id)
                plan.runs.append((q, kind))
            elif thread is None and q.may_offer and any((q.team_id, f.id) not in known for f in q.files):
                plan.new_threads.setdefault(q.thread, ("offered", DATA_PROFILE))
                plan.runs.append((q, "offer"))
        return plan

    @staticmethod
    def _profile_for(q: Question) -> str | None:
        """Threads started by sharing data keep the data visualizer; others follow the channel."""
        return DATA_PROFILE if q.has_data else None

    async def _profiles(self, session: AsyncSession) -> dict[str, int]:
        if not self._profile_ids:
            self._profile_ids = await repo.profile_ids(session)
        return self._profile_ids


def run_row(q: Question, *, kind: str, thread_id: int, profile_id: int | None) -> dict[str, Any]:
    """A new run for question `q` (kinds: "answer", "offer", "reset")."""
    return {
        "run_uuid": str(uuid.uuid4()),
        "thread_id": thread_id,
        "team_id": q.team_id,
        "channel_id": q.channel_id,
        "message_ts": q.message_ts,
        "reply_thread_ts": q.reply_thread_ts,
        "user_id": q.user_id,
        "text": q.text,
        "event_id": q.event_id,
        "kind": kind,
        "profile_id": profile_id,
    }


def _file_row(file: SharedFile, q: Question, thread_id: int, run_id: int) -> dict[str, Any]:
    return {
        "thread_id": thread_id,
        "run_id": run_id,
        "team_id": q.team_id,
        "slack_file_id": file.id,
        "name": file.name[:255],
        "mimetype": file.mimetype[:128],
        "filetype": file.filetype[:32],
        "size": file.size,
        "slack_meta": file.meta,
        "status": "pending",
    }
