"""Attach files shared in Slack to a thread's sandbox: Slack → (checks) → OpenAI Files → container.

A file is streamed from Slack to a spooled temporary file (in memory up to a few MB, on disk
beyond), checked, and streamed on to OpenAI: memory stays bounded whatever the file's size.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import errors
from bot.ai import OpenAIGateway
from bot.documents import count_pages
from bot.files import SharedFile, file_size, looks_right, mime_for, type_label
from bot.slack_api import SlackGateway
from db import repo
from db.models import ThreadFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Uploaded:
    """A Slack file now in the OpenAI Files API."""

    file_id: str
    #: A document's pages (see `bot.documents.count_pages`); None for other files or when unknown.
    pages: int | None = None


IN_MEMORY_BYTES = 4 << 20
#: How far past Slack's announced size a download may run before it is stopped.
SIZE_MARGIN = 64 << 10


class FileAttacher:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        ai: OpenAIGateway,
        slack: SlackGateway,
        max_bytes: int,
    ) -> None:
        self._sessions = sessions
        self._ai = ai
        self._slack = slack
        self.max_bytes = max_bytes

    async def attach_pending(
        self, thread_id: int, container_id: str | None, *, files: Sequence[ThreadFile] | None = None
    ) -> bool:
        """Bring every pending file of the thread into its sandbox, or record why it can't be;
        whether there were any. `files`: the thread's files, when the caller just read them."""
        if files is None:
            async with self._sessions() as session:
                files = await repo.files_of_thread(session, thread_id=thread_id)
        pending = [f for f in files if f.status == "pending"]
        for file in pending:
            try:
                await self._attach(file, container_id)
            except errors.FileError as exc:
                log.info("file %s (%s) rejected: %s", file.slack_file_id, exc.code, exc.detail)
                await self._save(file.id, status="rejected", error_code=exc.code)
        return bool(pending)

    async def _attach(self, file: ThreadFile, container_id: str | None) -> None:
        if file.openai_file_id is None:
            uploaded = await self._upload(file)
            await self._save(file.id, openai_file_id=uploaded.file_id, pages=uploaded.pages)
            openai_file_id = uploaded.file_id
        else:
            openai_file_id = file.openai_file_id
        path = await self._ai.add_to_container(container_id, openai_file_id) if container_id else None
        await self._save(file.id, status="ready", container_path=path)
        log.info("file %s attached to thread %s at %s", file.slack_file_id, file.thread_id, path)

    async def _upload(self, file: ThreadFile) -> Uploaded:
        meta = file.slack_meta or {"id": file.slack_file_id, "name": file.name}
        shared = SharedFile.from_slack({"filetype": file.filetype, "mimetype": file.mimetype, **meta})
        return await self.transfer(shared)

    async def transfer(self, file: SharedFile) -> Uploaded:
        """Slack → checks → OpenAI Files, streamed; returns the OpenAI file id (and a document's pages)."""
        if file.kind is None:
            raise errors.UnsupportedFileType(
                name=file.name, type=type_label(file.filetype, file.name, file.mimetype)
            )
        meta = file.meta
        if meta.get("file_access") == "check_file_info" or not meta.get("url_private_download"):
            meta = (await self._slack.file_info(file.id, name=file.name)).meta
        expected = max(file.size, file_size(meta.get("size")))
        if expected > self.max_bytes:
            raise errors.FileTooLarge(name=file.name, limit_mb=self.max_bytes >> 20)
        url = str(meta.get("url_private_download") or meta.get("url_private") or "")
        with tempfile.SpooledTemporaryFile(max_size=IN_MEMORY_BYTES) as spool:
            size = await self._download(url, spool, file, expected)
            spool.seek(0)
            head = spool.read(64)
            if size > expected > 0:
                raise errors.FileSizeMismatch(f"{size} bytes, {expected} announced", name=file.name)
            if (expected and size != expected) or not looks_right(file.filetype, file.name, head):
                raise errors.FileUnreadable(f"{size} bytes, expected {expected}", name=file.name)
            pages = count_pages(file.filetype, file.name, spool, size) if file.kind == "document" else None
            spool.seek(0)
            file_id = await self._ai.upload_file(
                file.name, spool, mime_for(file.filetype, file.name, file.mimetype)
            )
            return Uploaded(file_id, pages)

    async def _download(self, url: str, spool: IO[bytes], file: SharedFile, expected: int) -> int:
        """Download no more than Slack announced (plus a margin), or the cap when it announced nothing:
        a file that lies about its size must not cost 50 MB of traffic and disk."""
        limit = min(self.max_bytes, expected + SIZE_MARGIN) if expected else self.max_bytes
        try:
            return await self._slack.download(url, spool, name=file.name, max_bytes=limit)
        except errors.FileTooLarge:
            if not expected:
                raise
            raise errors.FileSizeMismatch(
                f"more than {limit} bytes, {expected} announced", name=file.name
            ) from None

    async def _save(self, file_id: int, **values: Any) -> None:
        async with self._sessions.begin() as session:
            row = await session.get(ThreadFile, file_id)
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)
