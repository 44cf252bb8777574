"""Preparing a model run for a question: the thread's conversation, sandbox and files, and the
instructions. The run-poller's side of the tutor; the handlers' side is `bot.tutor`.

Talks to the database, OpenAI (`bot.ai`) and Slack (`bot.slack_api`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import errors
from bot.ai import OpenAIGateway, RunRequest
from bot.attach import FileAttacher
from bot.config import Settings
from bot.documents import DocumentDesk
from bot.files import SharedFile, file_type
from bot.library import LibraryIndexer
from bot.slack_api import Place, SlackGateway
from bot.usage import UsageLedger
from db import repo
from db.models import DEFAULT_PROFILE, Profile, Run, ThreadFile, TutorThread

log = logging.getLogger(__name__)

SLACK_STYLE = (
    "You are answering inside Slack. Slack renders only simple Markdown: use short paragraphs, "
    "bullet lists, **bold**, `inline code` and fenced code blocks; avoid tables. "
    "Keep answers focused; show the key steps of a calculation. "
    "When you draw a chart, save it as a PNG file in /mnt/data and cite it: it is attached to the thread."
)
MATH_STYLE = (
    "Write math as short LaTeX: inline in \\( \\), e.g. \\(x^2 + 1\\), shown as Unicode text; a display "
    "equation in \\[ \\] on its own lines, rendered as an image, one equation per step of a derivation. "
    "Use aligned, cases or pmatrix only where needed. Never use $ for math: $5 always means money."
)
MARKER_NOTE = (
    "Each user turn starts with a tag like [slack message 1700000000.000100]. It is bookkeeping: "
    "ignore it and never repeat it."
)


def marker(message_ts: str) -> str:
    return f"[slack message {message_ts}]"


def place_of(run: Run) -> Place:
    return Place(channel_id=run.channel_id, thread_ts=run.reply_thread_ts)


@dataclass(frozen=True)
class Prepared:
    """A prepared run: the request for the model (None: nothing to ask), and the thread's files
    as they were once attached, which the replier's notices and sources are drawn from."""

    request: RunRequest | None
    files: tuple[ThreadFile, ...]


class RunPreparer:
    """Everything the poller needs from the tutor's domain before, around and after a model run."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        ai: OpenAIGateway,
        slack: SlackGateway,
        settings: Settings,
    ) -> None:
        self._sessions = sessions
        self._ai = ai
        self._slack = slack
        self._settings = settings
        self._files = FileAttacher(
            sessions=sessions, ai=ai, slack=slack, max_bytes=settings.tutor_max_file_mb << 20
        )
        self.documents = DocumentDesk(sessions=sessions, ai=ai, settings=settings)
        #: A library add's worker part: upload, index, report (`/tutor library` is the handlers').
        self.library = LibraryIndexer(sessions=sessions, files=self._files, desk=self.documents, slack=slack)
        #: Usage recorded when a run finishes, and the daily budgets checked before its create.
        self.usage = UsageLedger(sessions=sessions, settings=settings)

    async def show_working(self, run: Run, status: str = "is thinking…") -> None:
        await self._slack.show_status(place_of(run), status, message_ts=run.message_ts)

    async def prepare(self, run: Run) -> Prepared:
        """Everything a model run needs: the thread's conversation, sandbox and files, and
        instructions. No request when there is nothing to ask (only rejected files, no text);
        BudgetExceeded, before anything reaches OpenAI, when a daily budget is used up.

        What the database knows is read in one go (a question in a thread without files or
        documents costs one round of queries, not one per part); it is read again only where
        attaching or indexing changed it."""
        async with self._sessions() as session:
            thread = await session.get(TutorThread, run.thread_id)
            assert thread is not None
            files: Sequence[ThreadFile] = await repo.files_of_thread(session, thread_id=thread.id)
            if not run.text.strip() and not any(f.run_id == run.id for f in files):
                raise errors.EmptyQuestion()
            channel = await repo.get_channel_settings(session, team_id=run.team_id, channel_id=run.channel_id)
            # The run's own (file analyses), the thread's, the channel's choice, or the math tutor.
            chosen = run.profile_id or thread.profile_id or (channel.profile_id if channel else None)
            profile = await repo.profile_or_default(session, profile_id=chosen, default_slug=DEFAULT_PROFILE)
            if run.create_started_at is None:  # a create that may have landed is not refused after the fact
                await self.usage.check(
                    session, team_id=run.team_id, channel_id=run.channel_id, user_id=run.user_id
                )
            scoped = await repo.documents_in_scopes(session, scope_keys=list(self.documents.scopes(run)))
        first_turn = thread.conversation_id is None
        conversation_id = thread.conversation_id or await self._new_conversation(thread, profile)
        if first_turn and run.reply_thread_ts and run.channel_id.startswith("D"):
            await self._slack.set_title(run.channel_id, run.reply_thread_ts, run.text)
        container_id, sandbox_reset = None, False
        if "code_interpreter" in profile.tools:
            container_id, sandbox_reset = await self._sandbox(thread, files)
            if container_id != thread.container_id and any(f.status == "ready" for f in files):
                files = await self._files_of(thread.id)  # their paths in the new sandbox
        if await self._files.attach_pending(thread.id, container_id, files=files):
            files = await self._files_of(thread.id)
        indexing = bool(self.documents.to_index(run, files))
        documents = await self.documents.prepare(
            run, thread, lambda status: self.show_working(run, status), files=files, scoped=scoped
        )
        if indexing:  # a document that could not be indexed is rejected
            files = await self._files_of(thread.id)
        mine = [f for f in files if f.run_id == run.id and f.status == "ready"]
        if not run.text.strip() and not mine:
            return Prepared(None, tuple(files))
        name = await self._slack.display_name(run.user_id)
        request = RunRequest(
            model=profile.model or self._settings.tutor_model,
            conversation_id=conversation_id,
            instructions=build_instructions(
                profile,
                display_name=name,
                sandbox_reset=sandbox_reset,
                sandbox_files=[f.container_path for f in files if f.status == "ready" and f.container_path],
                channel_instructions=channel.custom_instructions if channel else None,
                documents=documents.instructions(),
            ),
            input_text=_input_text(run, mine),
            container_id=container_id,
            metadata={
                "tutor_run": run.run_uuid,
                "slack_thread": f"{run.team_id}:{run.channel_id}:{thread.thread_ts}",
                "profile": profile.slug,
            },
            reasoning_effort=self._settings.tutor_reasoning_effort,
            max_output_tokens=self._settings.tutor_max_output_tokens,
            image_file_ids=tuple(f.openai_file_id for f in mine if f.openai_file_id and _kind(f) == "image"),
            document_file_ids=documents.input_file_ids,
            vector_store_ids=documents.vector_store_ids,
        )
        return Prepared(request, tuple(files))

    async def _files_of(self, thread_id: int) -> list[ThreadFile]:
        async with self._sessions() as session:
            return list(await repo.files_of_thread(session, thread_id=thread_id))

    async def _sandbox(self, thread: TutorThread, files: Sequence[ThreadFile]) -> tuple[str, bool]:
        """The thread's live container; a new one (with every file of the thread) if it expired."""
        ready = [f for f in files if f.status == "ready"]
        container_id, fresh = await self._ai.ensure_container(
            thread.container_id,
            name=f"slack-tutor {thread.team_id}:{thread.channel_id}:{thread.thread_ts}",
            file_ids=[f.openai_file_id for f in ready if f.openai_file_id],
        )
        if container_id == thread.container_id:
            return container_id, False
        await self._update_thread(thread.id, container_id=container_id)
        if ready:
            paths = {cf.filename: cf.path for cf in await self._ai.list_container_files(container_id)}
            async with self._sessions.begin() as session:
                for file in ready:
                    row = await session.get(ThreadFile, file.id)
                    if row is not None:
                        row.container_path = paths.get(file.name, row.container_path)
        log.info("thread %s: new sandbox %s (%d files re-added)", thread.id, container_id, len(ready))
        return container_id, fresh and thread.container_id is not None

    async def forget_container(self, thread_id: int) -> None:
        await self._update_thread(thread_id, container_id=None)

    async def forget_conversation(self, thread_id: int) -> None:
        await self._update_thread(thread_id, conversation_id=None)

    async def conversation_of(self, run: Run) -> str | None:
        async with self._sessions() as session:
            thread = await session.get(TutorThread, run.thread_id)
            return thread.conversation_id if thread else None

    async def reset_thread(self, run: Run) -> None:
        async with self._sessions.begin() as session:
            thread = await session.get(TutorThread, run.thread_id)
            if thread is not None:
                await repo.forget_threads(session, threads=[thread])

    async def _new_conversation(self, thread: TutorThread, profile: Profile) -> str:
        created = await self._ai.create_conversation(
            {
                "team": thread.team_id,
                "channel": thread.channel_id,
                "thread_ts": thread.thread_ts,
                "profile": profile.slug,
            }
        )
        async with self._sessions.begin() as session:
            winner = await repo.set_conversation_once(session, thread_id=thread.id, conversation_id=created)
        if winner != created:
            # Another worker created one for this thread at the same moment: keep theirs.
            await self._ai.delete_conversation(created)
        return winner

    async def _update_thread(self, thread_id: int, **values: str | None) -> None:
        async with self._sessions.begin() as session:
            thread = await session.get(TutorThread, thread_id)
            if thread is not None:
                for key, value in values.items():
                    setattr(thread, key, value)


def build_instructions(
    profile: Profile,
    *,
    display_name: str,
    sandbox_reset: bool = False,
    sandbox_files: Sequence[str] = (),
    channel_instructions: str | None = None,
    documents: str | None = None,
) -> str:
    """The full instructions for one run: profile, then per-run context (never carried over by OpenAI)."""
    parts = [profile.instructions.strip()]
    if channel_instructions:
        parts.append(f"Instructions from this Slack channel:\n{channel_instructions.strip()}")
    parts.append(SLACK_STYLE)
    parts.append(MATH_STYLE)
    if display_name:
        parts.append(f"The person asking is {display_name}. Address them by that name.")
    if sandbox_files:
        parts.append("Files in your Python sandbox: " + ", ".join(sandbox_files) + ".")
    if documents:
        parts.append(documents)
    if sandbox_reset:
        parts.append(
            "Your Python sandbox was reset since the last turn: earlier variables are gone and files "
            "must be loaded again."
        )
    parts.append(MARKER_NOTE)
    return "\n\n".join(parts)


def _kind(file: ThreadFile) -> str | None:
    return SharedFile(file.slack_file_id, file.name, file.filetype, file.mimetype).kind


def _input_text(run: Run, files: Sequence[ThreadFile]) -> str:
    text = run.text.strip() or "Please analyse the file I shared."
    lines = [f"{marker(run.message_ts)} {text}"]
    if files:
        lines.append("")
        lines.append("Files I shared with this message:")
        for file in files:
            where = file.container_path or (
                "attached as a document" if _kind(file) == "document" else "attached as an image"
            )
            lines.append(f"- {file.name} ({file_type(file.filetype, file.name).upper()}): {where}")
    return "\n".join(lines)
