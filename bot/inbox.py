"""The durable inbox: questions are written to the database before Slack gets its ack.

Concurrent requests share one transaction ("group commit"): the first request to arrive
starts a write, and whatever arrives meanwhile goes into the next one. Every caller still
waits for the commit that holds its question, so nothing is acked before it is stored; the
database sees a handful of statements per batch instead of per event.

One bad question must not fail the others in its batch: what the database can't hold (NUL
bytes, lone surrogates, names longer than their column) is cleaned before the write, a
question with an impossible id is refused on its own, and a batch that fails anyway for its
content is written again one question at a time. A database outage fails every caller, so
Slack hears an error and retries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.files import SharedFile
from db import repo
from db.models import Run, ThreadFile, TutorThread

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


class UnstorableQuestion(ValueError):
    """The question carries what no Slack message can (an id too long, a NUL in an id)."""


class Inbox:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._pending: list[tuple[Question, asyncio.Future[bool]]] = []
        self._profile_ids: dict[str, int] = {}
        self._writer: asyncio.Task[None] | None = None

    async def store(self, question: Question) -> bool:
        """Durably queue a run for `question`; False if it isn't for the tutor, is a duplicate, or
        can't be stored at all (logged). Raises when the database is unavailable."""
        try:
            question = storable(question)
        except UnstorableQuestion as problem:
            _log_refused(question, str(problem))
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((question, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="inbox-writer")
        return await future

    async def _write_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            outage = await self._commit(batch)
            if outage is not None:
                # What queued up behind a failed write would wait for the same dead database:
                # answer it now, so Slack hears 503 within its 3 s and retries.
                waiting, self._pending = self._pending, []
                self._fail(waiting, outage)

    async def _commit(self, batch: list[tuple[Question, asyncio.Future[bool]]]) -> Exception | None:
        """Store a batch; returns the outage that stopped it, if one did."""
        try:
            stored = await self._write(q for q, _ in batch)
        except Exception as failure:
            if is_outage(failure):
                self._fail(batch, failure)
                return failure
            if len(batch) > 1:
                log.warning(
                    "%d questions failed together (%s); storing them one by one", len(batch), _brief(failure)
                )
                for index, item in enumerate(batch):
                    if (outage := await self._commit([item])) is not None:
                        self._fail(batch[index + 1 :], outage)
                        return outage
                return None
            self._fail(batch, failure)
            return None
        for question, future in batch:
            if not future.done():
                future.set_result(question.key in stored)
        return None

    @staticmethod
    def _fail(batch: list[tuple[Question, asyncio.Future[bool]]], failure: Exception) -> None:
        """A question the database refuses for its content is dropped (Slack must not retry it
        forever); any other failure is the caller's to report, so Slack retries."""
        if len(batch) == 1 and is_bad_input(failure):
            question, future = batch[0]
            _log_refused(question, _brief(failure))
            if not future.done():
                future.set_result(False)
            return
        for _, future in batch:
            if not future.done():
                future.set_exception(failure)

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
        self,
        session: AsyncSession,
        questions: Iterable[Question],
        threads: dict[repo.ThreadKey, repo.ThreadRef],
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
    """A new run for question `q` (kinds: "answer", "offer", "reset", "library")."""
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
    columns = ThreadFile.__table__.c
    return {
        "thread_id": thread_id,
        "run_id": run_id,
        "team_id": q.team_id,
        "slack_file_id": file.id,
        "name": _fit(file.name, columns.name),
        "mimetype": _fit(file.mimetype, columns.mimetype),
        "filetype": _fit(file.filetype, columns.filetype),
        "size": file.size,
        "slack_meta": file.meta,
        "status": "pending",
    }


#: NUL is refused by PostgreSQL text; lone surrogates can't be encoded as UTF-8 at all.
_UNHOLDABLE = re.compile("[\x00\ud800-\udfff]")
#: Question fields that are Slack ids, and the column each is stored in.
_ID_COLUMNS: dict[str, ColumnElement[Any]] = {
    "team_id": Run.__table__.c.team_id,
    "channel_id": Run.__table__.c.channel_id,
    "message_ts": Run.__table__.c.message_ts,
    "thread_key": TutorThread.__table__.c.thread_ts,
    "reply_thread_ts": Run.__table__.c.reply_thread_ts,
    "user_id": Run.__table__.c.user_id,
}
#: SQLSTATE classes of a refusal caused by the data: data exception, integrity violation.
_BAD_INPUT_STATES = ("22", "23")
#: SQLSTATE classes of an unavailable database: connection, resources, operator, system.
_OUTAGE_STATES = ("08", "53", "57", "58")


def clean_text(text: str) -> str:
    """`text` without NUL bytes, and with U+FFFD for lone surrogates."""
    return _UNHOLDABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


def _fit(text: str, column: ColumnElement[Any]) -> str:
    length: int | None = getattr(column.type, "length", None)
    return text[:length] if length else text


def _valid_id(value: str, column: ColumnElement[Any]) -> bool:
    length: int | None = getattr(column.type, "length", None)
    return _UNHOLDABLE.search(value) is None and (length is None or len(value) <= length)


def storable(q: Question) -> Question:
    """`q` as the database can hold it: free text cleaned, names cut to their columns, files
    with impossible ids left out. Raises UnstorableQuestion when one of its own ids is
    impossible, since no real Slack message has it."""
    ids: dict[str, Any] = {}
    for name, column in _ID_COLUMNS.items():
        value = getattr(q, name)
        if value is None:
            continue
        ids[name] = value = str(value)
        if not _valid_id(value, column):
            raise UnstorableQuestion(f"{name} is not a Slack id ({len(value)} characters)")
    event_id = None if q.event_id is None else str(q.event_id)
    if event_id is not None and not _valid_id(event_id, Run.__table__.c.event_id):
        event_id = None  # only bookkeeping: the question is still good
    return dataclasses.replace(
        q, **ids, text=clean_text(str(q.text)), event_id=event_id, files=tuple(_storable_files(q))
    )


def _storable_files(q: Question) -> Iterable[SharedFile]:
    for file in q.files:
        if not _valid_id(file.id, ThreadFile.__table__.c.slack_file_id):
            log.warning("file with an impossible id left out of %s/%s", q.channel_id[:40], q.message_ts[:40])
            continue
        yield dataclasses.replace(
            file,
            name=clean_text(file.name),
            filetype=clean_text(file.filetype),
            mimetype=clean_text(file.mimetype),
            meta=_clean_json(file.meta),
        )


def is_bad_input(failure: BaseException) -> bool:
    """Did the database (or its driver) refuse the data itself, rather than fail?"""
    if isinstance(failure, ValueError | TypeError | OverflowError | exc.IntegrityError | exc.DataError):
        return True
    if not isinstance(failure, exc.DBAPIError):
        return False
    driver = failure.orig
    if isinstance(driver, ValueError | TypeError | OverflowError) or isinstance(
        getattr(driver, "__cause__", None), ValueError | TypeError | OverflowError
    ):
        return True  # e.g. asyncpg's client-side "invalid input for query argument"
    return str(getattr(driver, "sqlstate", "") or "").startswith(_BAD_INPUT_STATES)


def is_outage(failure: BaseException) -> bool:
    """Is the database unreachable or unwell, so that no question could be stored now?"""
    if is_bad_input(failure):
        return False
    if isinstance(failure, OSError | TimeoutError | exc.TimeoutError | exc.DisconnectionError):
        return True
    if isinstance(failure, exc.DBAPIError):
        if failure.connection_invalidated or isinstance(failure, exc.OperationalError | exc.InterfaceError):
            return True
        return str(getattr(failure.orig, "sqlstate", "") or "").startswith(_OUTAGE_STATES)
    return False


def _brief(failure: BaseException) -> str:
    """One line about a failure; never the statement's parameters (they hold the question)."""
    detail = failure.orig if isinstance(failure, exc.DBAPIError) else failure
    lines = str(detail).splitlines() or [""]
    return f"{type(failure).__name__}: {lines[0][:200]}"


def _log_refused(q: Question, reason: str) -> None:
    log.warning(
        "question %r/%r not stored, Slack is told it was: %s",
        str(q.channel_id)[:40],
        str(q.message_ts)[:40],
        reason,
    )
