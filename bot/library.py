"""The channel library: course material every tutor thread of a channel searches.

`@tutor add this to the library` on shared files, or `/tutor library add` and then sharing them,
stores the files as pending channel documents with a "library" run before Slack gets its ack.
The worker uploads them (the usual file checks), indexes them in the channel's vector store
(`bot.documents`) and says in the thread how it went: "indexed 3 of 4 files". `/tutor library`
lists them; `remove` and `clear` delete them at OpenAI through the clean-up loop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import errors
from bot.attach import FileAttacher
from bot.documents import DocumentDesk, channel_scope
from bot.files import SharedFile, type_label
from bot.inbox import Question, UnstorableQuestion, run_row, storable
from bot.slack_api import SlackGateway
from db import repo
from db.models import Document, Run, utcnow

log = logging.getLogger(__name__)

#: How long `/tutor library add` waits for the files.
REQUEST_WINDOW = timedelta(minutes=10)
ADD_WORDS = re.compile(
    r"^\W*(please\s+)?(add|put|save)\s+(this|these|it|them|th(is|ese) files?|the files?)\s+"
    r"(to|in|into)\s+(the|our|this channel'?s)?\s*library\W*$",
    re.I,
)
NOTHING_TO_ADD = (
    "I found no new file to add: share the files with `@tutor add this to the library`, or run "
    "`/tutor library add` and then share them. A file already in the library isn't added twice."
)
STATUS_WORDS = {
    "pending": "waiting to be indexed",
    "indexing": "indexing…",
    "ready": "indexed",
    "failed": "OpenAI couldn't index it",
    "rejected": "not added",
}


@dataclass(frozen=True)
class LibraryEntry:
    name: str
    size: int
    added_by: str
    added_at: datetime
    status: str


@dataclass(frozen=True)
class LibraryListing:
    entries: tuple[LibraryEntry, ...]

    @property
    def progress(self) -> str:
        """ "indexed 3 of 4 files" """
        done = sum(e.status == "ready" for e in self.entries)
        total = sum(e.status != "rejected" for e in self.entries)
        return f"indexed {done} of {total} file{'' if total == 1 else 's'}"


@dataclass(frozen=True)
class LibraryOutcome:
    """How a library add went, as the thread reads it."""

    indexed: int
    total: int
    still_indexing: int
    problems: tuple[str, ...] = ()

    def message(self) -> str:
        if not self.total and not self.problems:
            return NOTHING_TO_ADD
        lines = []
        if self.total:
            lines.append(
                f"Added to this channel's library: indexed {self.indexed} of {self.total} "
                f"file{'' if self.total == 1 else 's'}. Every tutor thread in this channel can search it now."
            )
        if self.still_indexing:
            lines.append(
                f"{self.still_indexing} still being indexed by OpenAI; `/tutor library` shows how far it is."
            )
        lines.extend(self.problems)
        return "\n".join(lines)


class Library:
    """The handlers' side: store library adds, and list, remove and clear (database only)."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def accept(self, question: Question) -> bool | None:
        """Store a library add for this message: the run and its files. None when the message
        isn't one (the tutor treats it as a question); False for a duplicate."""
        explicit = question.starts_thread and ADD_WORDS.match(question.text) is not None
        if not explicit and (question.is_mention or not question.files):
            return None
        try:
            question = storable(question)
        except UnstorableQuestion:
            return None
        async with self._sessions.begin() as session:
            if not explicit and not await repo.take_library_request(
                session,
                team_id=question.team_id,
                channel_id=question.channel_id,
                user_id=question.user_id,
                now=utcnow(),
            ):
                return None
            return await self._store(session, question, active=explicit)

    async def _store(self, session: AsyncSession, question: Question, *, active: bool) -> bool:
        thread = await repo.find_thread(
            session, team_id=question.team_id, channel_id=question.channel_id, thread_ts=question.thread_key
        )
        if thread is None:
            row = {
                "team_id": question.team_id,
                "channel_id": question.channel_id,
                "thread_ts": question.thread_key,
                "state": "active" if active else "offered",
            }
            await repo.create_threads(session, rows=[row])
            thread = await repo.find_thread(
                session,
                team_id=question.team_id,
                channel_id=question.channel_id,
                thread_ts=question.thread_key,
            )
        assert thread is not None
        created = await repo.insert_runs(
            session, rows=[run_row(question, kind="library", thread_id=thread.id, profile_id=None)]
        )
        if not created:
            return False
        run_id = next(iter(created.values()))
        files = list(question.files)
        if not files:  # "add this to the library" in the thread of a file shared with a question
            files = [
                SharedFile.from_slack({"filetype": f.filetype, "mimetype": f.mimetype, **f.slack_meta})
                for f in await repo.files_of_thread(session, thread_id=thread.id)
                if f.slack_meta
            ]
        await _store_documents(
            session, question.team_id, question.channel_id, run_id, question.user_id, files
        )
        log.info("library add %s/%s: %d files", question.channel_id, question.message_ts, len(files))
        return True

    async def request_files(self, *, team_id: str, channel_id: str, user_id: str) -> None:
        """`/tutor library add`: this person's next file share here goes to the library."""
        async with self._sessions.begin() as session:
            await repo.request_library_files(
                session,
                team_id=team_id,
                channel_id=channel_id,
                user_id=user_id,
                until=utcnow() + REQUEST_WINDOW,
            )

    async def listing(self, *, team_id: str, channel_id: str) -> LibraryListing:
        async with self._sessions() as session:
            docs = await repo.documents_in_scope(session, scope_key=channel_scope(team_id, channel_id))
        return LibraryListing(
            tuple(LibraryEntry(d.name, d.size, d.added_by, d.created_at, d.status) for d in docs)
        )

    async def remove(self, *, team_id: str, channel_id: str, name: str) -> list[str]:
        """Take the files called `name` out of the library (and OpenAI); their names."""
        wanted = name.strip().strip("`*_\"'").casefold()
        async with self._sessions.begin() as session:
            docs = await repo.documents_in_scope(session, scope_key=channel_scope(team_id, channel_id))
            gone = [d for d in docs if d.name.casefold() == wanted]
            await repo.forget_documents(session, documents=gone)
        return [d.name for d in gone]

    async def clear(self, *, team_id: str, channel_id: str) -> int:
        """Empty the library: every file, and the vector store, deleted at OpenAI."""
        scope = channel_scope(team_id, channel_id)
        async with self._sessions.begin() as session:
            docs = await repo.documents_in_scope(session, scope_key=scope)
            await repo.forget_documents(session, documents=docs)
            await repo.forget_vector_store(session, scope_key=scope)
        log.info("library of %s cleared (%d files)", channel_id, len(docs))
        return len(docs)


class LibraryIndexer:
    """The run-poller's side of a library add: upload the files, index them, say how it went."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        files: FileAttacher,
        desk: DocumentDesk,
        slack: SlackGateway,
    ) -> None:
        self._sessions = sessions
        self._files = files
        self._desk = desk
        self._slack = slack

    async def index(self, run: Run, show: Callable[[str], Awaitable[None]]) -> LibraryOutcome:
        """The worker's part of a library add: upload, index, wait (bounded), and say how it went."""
        async with self._sessions() as session:
            docs = list(await repo.documents_of_run(session, run_id=run.id))
        if not docs and run.reply_thread_ts and run.reply_thread_ts != run.message_ts:
            docs = await self._files_of_thread_root(run)
        for doc in docs:
            if doc.status == "pending" and doc.openai_file_id is None:
                await self._upload(doc)
        async with self._sessions() as session:
            docs = list(await repo.documents_of_run(session, run_id=run.id))
        if any(d.status == "pending" for d in docs):
            store = await self._desk.ensure_store(
                scope_key=channel_scope(run.team_id, run.channel_id),
                team_id=run.team_id,
                channel_id=run.channel_id,
                name=f"slack-tutor library {run.team_id}:{run.channel_id}",
            )
            await self._desk.start_indexing(docs, store)
        if docs:
            await show(f"is indexing {len(docs)} file{'' if len(docs) == 1 else 's'}…")
        finished = await self._desk.wait_indexed(
            [d.id for d in docs],
            show=lambda done, total: show(f"is indexing: {done} of {total} files indexed…"),
        )
        return _outcome(finished, limit_mb=self._files.max_bytes >> 20)

    async def _files_of_thread_root(self, run: Run) -> list[Document]:
        """Said in the thread of a file share the tutor never stored (no mention): that message's files."""
        assert run.reply_thread_ts is not None
        found = await self._slack.thread_root_files(run.channel_id, run.reply_thread_ts)
        files = [SharedFile.from_slack(f) for f in found if isinstance(f.get("id"), str)]
        if not files:
            return []
        async with self._sessions.begin() as session:
            await _store_documents(session, run.team_id, run.channel_id, run.id, run.user_id, files)
            return list(await repo.documents_of_run(session, run_id=run.id))

    async def _upload(self, doc: Document) -> None:
        shared = SharedFile.from_slack(
            {
                "filetype": doc.filetype,
                "mimetype": doc.mimetype,
                **(doc.slack_meta or {}),
                "id": doc.slack_file_id,
            }
        )
        values: dict[str, Any]
        try:
            if shared.kind not in ("document", None):  # file_search reads documents, not data or images
                raise errors.NotForLibrary(name=shared.name)
            uploaded = await self._files.transfer(shared)
            values = {"openai_file_id": uploaded.file_id}
        except errors.FileError as exc:
            log.info("library file %s (%s) rejected: %s", doc.slack_file_id, exc.code, exc.detail)
            values = {"status": "rejected", "error_code": exc.code}
        async with self._sessions.begin() as session:
            row = await session.get(Document, doc.id)
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)
            elif "openai_file_id" in values:  # removed from the library meanwhile: nothing orphaned
                await repo.queue_cleanup(session, kind="file", object_id=values["openai_file_id"])


async def _store_documents(
    session: AsyncSession,
    team_id: str,
    channel_id: str,
    run_id: int,
    user_id: str,
    files: Sequence[SharedFile],
) -> None:
    """Pending library documents; a file already in the library is not added again."""
    await repo.insert_documents(
        session,
        rows=[
            {
                "scope": "channel",
                "scope_key": channel_scope(team_id, channel_id),
                "team_id": team_id,
                "channel_id": channel_id,
                "run_id": run_id,
                "slack_file_id": f.id[:32],
                "name": f.name[:255],
                "filetype": f.filetype[:32],
                "mimetype": f.mimetype[:128],
                "size": f.size,
                "added_by": user_id,
                "slack_meta": f.meta,
            }
            for f in files
        ],
    )


def _outcome(docs: Sequence[Document], *, limit_mb: int) -> LibraryOutcome:
    problems = []
    for doc in docs:
        if doc.status == "failed":
            problems.append(errors.DocumentNotIndexed(name=_shown(doc.name)).user_message)
        elif doc.status == "rejected":
            problems.append(
                errors.file_error(
                    doc.error_code,
                    name=_shown(doc.name),
                    limit_mb=limit_mb,
                    type=type_label(doc.filetype, doc.name, doc.mimetype),
                ).user_message
            )
    return LibraryOutcome(
        indexed=sum(d.status == "ready" for d in docs),
        total=sum(d.status != "rejected" for d in docs),
        still_indexing=sum(d.status == "indexing" for d in docs),
        problems=tuple(problems),
    )


def _shown(name: str) -> str:
    return name.replace("`", "'").replace("<", "‹").replace(">", "›")
