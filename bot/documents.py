"""Documents the tutor reads, and the sources it names.

A document shared with a question (PDF, DOCX, PPTX, TXT, Markdown) is shown to the model page by
page as `input_file` parts when it is small (TUTOR_DOCUMENT_MAX_PAGES, TUTOR_DOCUMENT_MAX_MB);
a larger one goes to the thread's vector store and the model searches it (`file_search`). The
channel's library (`bot.library`) is another vector store, searched by every thread of the channel.

Indexing is asynchronous at OpenAI: a run waits for its own documents, bounded by
TUTOR_INDEX_WAIT, showing the progress in the thread status. The chain Slack file → OpenAI file →
vector store file is a `documents` row per scope; the same Slack file is indexed once per scope.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zipfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import errors
from bot.ai import IndexState, ModelReply, OpenAIGateway
from bot.config import Settings
from bot.files import SharedFile, file_type
from bot.formatting import escape_mrkdwn
from db import repo
from db.models import Document, Run, ThreadFile, TutorThread

log = logging.getLogger(__name__)

#: A text page, for TXT and Markdown files (which have none): about 3,000 characters.
TEXT_PAGE_BYTES = 3000
#: Indexing files of a channel library refreshed before a run (the rest wait for the next one).
REFRESH_LIMIT = 20
#: Private-use citation markers (`\ue200filecite…\ue201`) and the Assistants-era `【4:0†notes.pdf】`.
_MARKERS = re.compile(r"\ue200[^\ue201]*\ue201|【[^】\n]{0,120}†[^】\n]{0,200}】")
_PPTX_SLIDE = re.compile(r"ppt/slides/slide\d+\.xml")
_DOCX_PAGES = re.compile(rb"<Pages>(\d+)</Pages>")

Show = Callable[[str], Awaitable[None]]


def thread_scope(thread_id: int) -> str:
    return f"thread:{thread_id}"


def channel_scope(team_id: str, channel_id: str) -> str:
    return f"channel:{team_id}:{channel_id}"


def is_document(file: ThreadFile | Document) -> bool:
    return SharedFile(file.slack_file_id, file.name, file.filetype, file.mimetype).kind == "document"


def count_pages(filetype: str, name: str, content: IO[bytes], size: int) -> int | None:
    """Pages of a PDF (pypdf), slides of a PPTX, a DOCX's saved page count, text estimated; None if
    unknown. Reads `content` from its start and leaves it anywhere."""
    kind = file_type(filetype, name)
    try:
        content.seek(0)
        if kind == "pdf":
            from pypdf import PdfReader  # imported only when a PDF arrives (it's large)

            return len(PdfReader(content).pages)
        if kind == "pptx":
            with zipfile.ZipFile(content) as archive:
                return sum(bool(_PPTX_SLIDE.fullmatch(n)) for n in archive.namelist()) or None
        if kind == "docx":
            with zipfile.ZipFile(content) as archive:
                found = _DOCX_PAGES.search(archive.read("docProps/app.xml"))
            return int(found.group(1)) if found else None
        if kind in ("txt", "text", "md", "markdown"):
            return max(1, -(-size // TEXT_PAGE_BYTES))
    except Exception as exc:  # a document pypdf or zipfile can't parse is still OpenAI's to read
        log.info("could not count the pages of %s (%s)", name, type(exc).__name__)
    return None


def strip_citation_markers(text: str) -> str:
    """The answer without raw citation markers (the Sources line names the documents instead)."""
    return re.sub(r"[ \t]+([.,;:!?])", r"\1", _MARKERS.sub("", text)) if _MARKERS.search(text) else text


@dataclass(frozen=True)
class DocumentPlan:
    """What a run reads: documents shown page by page, and the vector stores it searches."""

    input_file_ids: tuple[str, ...] = ()
    vector_store_ids: tuple[str, ...] = ()
    shown: tuple[str, ...] = ()
    searched: tuple[str, ...] = ()
    library_files: int = 0

    def instructions(self) -> str | None:
        lines = []
        if self.shown:
            lines.append(
                "Documents shown to you with this question, page by page: " + ", ".join(self.shown) + "."
            )
        where = []
        if self.searched:
            where.append("this thread's documents (" + ", ".join(self.searched) + ")")
        if self.library_files:
            count = "1 file" if self.library_files == 1 else f"{self.library_files} files"
            where.append(f"this Slack channel's library ({count} of course material)")
        if where:
            lines.append(
                "Use file_search to look things up in " + " and ".join(where) + ". When an answer "
                "comes from them, say so and cite the file; don't write citation markers yourself."
            )
        return " ".join(lines) or None


@dataclass(frozen=True)
class Source:
    name: str
    url: str | None = None


class DocumentDesk:
    def __init__(
        self, *, sessions: async_sessionmaker[AsyncSession], ai: OpenAIGateway, settings: Settings
    ) -> None:
        self._sessions = sessions
        self._ai = ai
        self._settings = settings

    def shown_whole(self, file: ThreadFile) -> bool:
        """Small enough for `input_file` (pages unknown: decided by size alone)."""
        settings = self._settings
        small = file.size <= settings.tutor_document_max_mb * (1 << 20)
        return small and (file.pages is None or file.pages <= settings.tutor_document_max_pages)

    @staticmethod
    def scopes(run: Run) -> tuple[str, str]:
        """The two scopes a run searches: its thread's documents, and its channel's library."""
        return thread_scope(run.thread_id), channel_scope(run.team_id, run.channel_id)

    def to_index(self, run: Run, files: Sequence[ThreadFile]) -> list[ThreadFile]:
        """The run's ready documents too large to show whole: indexed into the thread's store."""
        mine = [f for f in files if f.run_id == run.id and f.status == "ready" and f.openai_file_id]
        return [f for f in mine if is_document(f) and not self.shown_whole(f)]

    async def prepare(
        self,
        run: Run,
        thread: TutorThread,
        show: Show,
        *,
        files: Sequence[ThreadFile],
        scoped: Mapping[str, Sequence[Document]],
    ) -> DocumentPlan:
        """The run's documents routed (large ones indexed, waited for), and the stores to search.
        `files` are the thread's, `scoped` the documents of `scopes(run)`, as the caller read them."""
        mine = [f for f in files if f.run_id == run.id and f.status == "ready" and f.openai_file_id]
        docs = [f for f in mine if is_document(f)]
        shown = [f for f in docs if self.shown_whole(f)]
        large = self.to_index(run, files)
        thread_key, channel_key = self.scopes(run)
        if large:
            await self._index_thread_documents(run, thread, large, show)
            scoped = {}  # the thread's store changed: read again
        thread_store = await self.searchable(thread_key, scoped.get(thread_key))
        library = await self.searchable(channel_key, scoped.get(channel_key))
        return DocumentPlan(
            input_file_ids=tuple(f.openai_file_id or "" for f in shown),
            vector_store_ids=tuple(store for store, _ in (thread_store, library) if store),
            shown=tuple(f.name for f in shown),
            searched=tuple(d.name for d in thread_store[1]),
            library_files=len(library[1]),
        )

    async def _index_thread_documents(
        self, run: Run, thread: TutorThread, large: Sequence[ThreadFile], show: Show
    ) -> None:
        scope = thread_scope(thread.id)
        store = await self.ensure_store(
            scope_key=scope,
            team_id=thread.team_id,
            channel_id=thread.channel_id,
            name=f"slack-tutor thread {thread.team_id}:{thread.channel_id}:{thread.thread_ts}",
        )
        async with self._sessions.begin() as session:
            await repo.insert_documents(
                session,
                rows=[
                    {
                        "scope": "thread",
                        "scope_key": scope,
                        "team_id": thread.team_id,
                        "channel_id": thread.channel_id,
                        "thread_id": thread.id,
                        "run_id": run.id,
                        "slack_file_id": f.slack_file_id,
                        "name": f.name,
                        "filetype": f.filetype,
                        "mimetype": f.mimetype,
                        "size": f.size,
                        "added_by": run.user_id,
                        "slack_meta": f.slack_meta,
                        # Uploaded once already, for the thread: the same OpenAI file is indexed.
                        "openai_file_id": f.openai_file_id,
                    }
                    for f in large
                ],
            )
            docs = [
                d
                for d in await repo.documents_in_scope(session, scope_key=scope)
                if d.slack_file_id in {f.slack_file_id for f in large}
            ]
        await self.start_indexing(docs, store)
        names = ", ".join(d.name for d in docs)
        await show(f"is reading {names}…")
        finished = await self.wait_indexed(
            [d.id for d in docs],
            show=lambda done, total: show(f"is reading {names} (indexed {done} of {total})…"),
        )
        failed = {d.slack_file_id for d in finished if d.status == "failed"}
        if failed:
            async with self._sessions.begin() as session:
                for file in large:
                    if file.slack_file_id in failed:
                        row = await session.get(ThreadFile, file.id)
                        if row is not None:
                            row.status, row.error_code = "rejected", errors.DocumentNotIndexed().code

    async def ensure_store(self, *, scope_key: str, team_id: str, channel_id: str, name: str) -> str:
        """The scope's vector store, created on first need (a concurrent creator's duplicate is deleted)."""
        async with self._sessions() as session:
            known = await repo.get_vector_store(session, scope_key=scope_key)
        if known is not None:
            return known.openai_id
        created = await self._ai.create_vector_store(name, {"scope": scope_key[:512]})
        async with self._sessions.begin() as session:
            winner = await repo.set_vector_store_once(
                session, scope_key=scope_key, team_id=team_id, channel_id=channel_id, openai_id=created
            )
        if winner != created:
            await self._ai.delete_vector_store(created)
        return winner

    async def start_indexing(self, docs: Sequence[Document], store: str) -> None:
        """Add the uploaded, not yet indexed documents to the store (one batch)."""
        todo = [d for d in docs if d.status == "pending" and d.openai_file_id]
        if not todo:
            return
        await self._ai.add_to_vector_store(store, [d.openai_file_id or "" for d in todo])
        async with self._sessions.begin() as session:
            for doc in todo:
                row = await session.get(Document, doc.id)
                if row is not None:
                    row.status, row.vector_store_id = "indexing", store
                else:  # removed meanwhile: take it out of the store again
                    await repo.queue_cleanup(
                        session, kind="vector_store_file", object_id=f"{store}/{doc.openai_file_id}"
                    )

    async def wait_indexed(
        self, doc_ids: Sequence[int], *, show: Callable[[int, int], Awaitable[None]]
    ) -> list[Document]:
        """Poll OpenAI until these documents are indexed or failed, for at most TUTOR_INDEX_WAIT;
        `show(done, total)` hears each change. Returns the rows as they ended."""
        shown = -1
        try:
            async with asyncio.timeout(self._settings.tutor_index_wait):
                while True:
                    docs = await self.refresh(doc_ids)
                    done = sum(d.status in ("ready", "failed", "rejected") for d in docs)
                    if done != shown and docs:
                        shown = done
                        await show(sum(d.status == "ready" for d in docs), len(docs))
                    if all(d.status != "indexing" for d in docs):
                        return docs
                    await asyncio.sleep(self._settings.tutor_poll_interval)
        except TimeoutError:
            log.info(
                "documents %s still indexing after %.0fs", list(doc_ids), self._settings.tutor_index_wait
            )
        async with self._sessions() as session:
            return list(await repo.documents_by_ids(session, ids=doc_ids))

    async def refresh(self, doc_ids: Sequence[int]) -> list[Document]:
        """Ask OpenAI how the indexing documents are doing, and record it."""
        async with self._sessions() as session:
            docs = list(await repo.documents_by_ids(session, ids=doc_ids))
        indexing = [d for d in docs if d.status == "indexing" and d.vector_store_id and d.openai_file_id]
        by_store: dict[str, dict[str, IndexState]] = {}
        for store in {d.vector_store_id or "" for d in indexing}:
            by_store[store] = await self._ai.index_states(store)  # one listing per store, not per file
        changed = {}
        for doc in indexing:
            state = by_store[doc.vector_store_id or ""].get(doc.openai_file_id or "")
            if state is not None and state.done:
                changed[doc.id] = state
        if changed:
            async with self._sessions.begin() as session:
                for doc_id, state in changed.items():
                    row = await session.get(Document, doc_id)
                    if row is not None:
                        row.status = "ready" if state.status == "completed" else "failed"
                        row.error_code = state.error_code if row.status == "failed" else None
                        if row.status == "failed":
                            log.info(
                                "document %s not indexed: %s %s",
                                row.name,
                                state.error_code,
                                state.error_message,
                            )
            async with self._sessions() as session:
                docs = list(await repo.documents_by_ids(session, ids=doc_ids))
        return docs

    async def searchable(
        self, scope_key: str, docs: Sequence[Document] | None = None
    ) -> tuple[str | None, list[Document]]:
        """A scope's vector store and the documents in it that can be searched (indexing ones are
        refreshed first: indexing that outlasted its wait finishes here); (None, []) if none.
        `docs`: the scope's documents, when the caller just read them."""
        if docs is None:
            async with self._sessions() as session:
                docs = await repo.documents_in_scope(session, scope_key=scope_key)
        indexing = [d.id for d in docs if d.status == "indexing"][:REFRESH_LIMIT]
        if indexing:
            try:
                await self.refresh(indexing)
            except errors.TutorError as exc:
                log.info("%s: could not refresh indexing (%s)", scope_key, exc.code)
            async with self._sessions() as session:
                docs = await repo.documents_in_scope(session, scope_key=scope_key)
        usable = [d for d in docs if d.status in ("ready", "indexing") and d.vector_store_id]
        return (usable[0].vector_store_id, usable) if usable else (None, [])


def may_have_sources(run: Run, reply: ModelReply, files: Sequence[ThreadFile]) -> bool:
    """Whether `sources_of` can find any: the answer cites files, or its question shared documents."""
    return bool(reply.citations) or any(
        f.run_id == run.id and f.status == "ready" and is_document(f) for f in files
    )


async def sources_of(
    session: AsyncSession, run: Run, reply: ModelReply, files: Sequence[ThreadFile] | None = None
) -> list[Source]:
    """The documents an answer used: those it cites, then those shared with its question.
    `files`: the thread's, when the caller has them."""
    if files is None:
        files = await repo.files_of_thread(session, thread_id=run.thread_id)
    if not may_have_sources(run, reply, files):
        return []
    docs = await repo.documents_for_channel(
        session, team_id=run.team_id, channel_id=run.channel_id, thread_id=run.thread_id
    )
    known_files: list[ThreadFile | Document] = [*files, *docs]
    by_openai_id = {f.openai_file_id: f for f in known_files if f.openai_file_id}
    found: dict[str, Source] = {}
    for citation in reply.citations:
        known = by_openai_id.get(citation.file_id)
        name = known.name if known else citation.filename
        found.setdefault(known.slack_file_id if known else citation.file_id, _source(name, known))
    for file in files:
        if file.run_id == run.id and file.status == "ready" and is_document(file):
            found.setdefault(file.slack_file_id, _source(file.name, file))
    return list(found.values())


def _source(name: str, known: ThreadFile | Document | None) -> Source:
    url = (known.slack_meta or {}).get("permalink") if known else None
    return Source(name=name, url=url if isinstance(url, str) and url.startswith("https://") else None)


def sources_line(sources: Sequence[Source]) -> str:
    """ "Sources: *algebra-notes.pdf*, …" in mrkdwn, each linked to its Slack file where there is one."""
    shown = []
    for source in sources:
        name = escape_mrkdwn(source.name.replace("*", "").replace("|", "/"))
        shown.append(f"*<{source.url}|{name}>*" if source.url else f"*{name}*")
    return "Sources: " + ", ".join(shown)
