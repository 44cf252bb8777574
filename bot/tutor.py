"""The tutor's use cases: accept a question, prepare a model run for it.

Talks to the database, OpenAI (`bot.ai`) and Slack (`bot.slack_api`); knows neither HTTP nor Bolt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import errors
from bot.ai import OpenAIGateway, RunRequest
from bot.attach import FileAttacher
from bot.config import Settings
from bot.documents import DocumentDesk
from bot.files import SharedFile, file_type
from bot.home import home_view
from bot.inbox import DATA_PROFILE, Inbox, Question, run_row
from bot.library import Library
from bot.slack_api import Place, SlackGateway
from db import repo
from db.models import Profile, Run, ThreadFile, TutorThread

log = logging.getLogger(__name__)

DEFAULT_PROFILE = "math"
SUGGESTED_PROMPTS = (
    ("Solve an equation", "Solve 3x + 11 = 14 step by step"),
    ("Explain with a plot", "Explain derivatives with a plot"),
    ("Analyse my data", "Analyse a CSV I'll share"),
)

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


@dataclass(frozen=True)
class ChannelStatus:
    profile_name: str
    model: str
    active_threads: int
    auto_analysis: bool
    files: int
    custom_instructions: str | None


def marker(message_ts: str) -> str:
    return f"[slack message {message_ts}]"


def place_of(run: Run) -> Place:
    return Place(channel_id=run.channel_id, thread_ts=run.reply_thread_ts)


class Tutor:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        ai: OpenAIGateway,
        slack: SlackGateway,
        settings: Settings,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._ai = ai
        self._slack = slack
        self._settings = settings
        self._inbox = Inbox(sessions)
        self._files = FileAttacher(
            sessions=sessions, ai=ai, slack=slack, max_bytes=settings.tutor_max_file_mb << 20
        )
        self.documents = DocumentDesk(sessions=sessions, ai=ai, settings=settings)
        self.library = Library(sessions=sessions, files=self._files, desk=self.documents, slack=slack)
        self.wake = wake

    async def accept(self, question: Question) -> bool:
        """Store the question as a queued run if the tutor should answer it; False when it shouldn't
        (not addressed to the tutor) or when this Slack message already has a run."""
        library_add = await self.library.accept(question)
        accepted = await self._inbox.store(question) if library_add is None else library_add
        if accepted:
            log.info("question %s/%s queued", question.channel_id, question.message_ts)
            self.wake()
        return accepted

    async def start_analysis(
        self, *, team_id: str, channel_id: str, thread_ts: str, user_id: str, offer_ts: str
    ) -> list[str] | None:
        """The "Analyse it" button: activate the offered thread and queue an analysis of its files.
        Returns the file names, or None if there is nothing to start (already started, unknown)."""
        async with self._sessions.begin() as session:
            thread = await repo.find_thread(
                session, team_id=team_id, channel_id=channel_id, thread_ts=thread_ts
            )
            files = (
                [f for f in await repo.files_of_thread(session, thread_id=thread.id) if f.status == "pending"]
                if thread is not None
                else []
            )
            if thread is None or not files:
                return None  # nothing offered here (a forged or stale press): no empty run
            thread.state = "active"
            data = await repo.get_profile(session, slug=DATA_PROFILE)
            # Keyed on the offer message's ts: a second press of the same button is a duplicate.
            press = _button_press(team_id, channel_id, offer_ts, thread_ts, user_id)
            created = await repo.insert_runs(
                session,
                rows=[
                    run_row(press, kind="answer", thread_id=thread.id, profile_id=data.id if data else None)
                ],
            )
            if not created:
                return None
            run_id = next(iter(created.values()))
            for file in files:
                file.run_id = run_id
        self.wake()
        return [f.name for f in files]

    async def set_auto_analysis(self, *, team_id: str, channel_id: str, on: bool) -> None:
        async with self._sessions.begin() as session:
            settings = await repo.upsert_channel_settings(session, team_id=team_id, channel_id=channel_id)
            settings.auto_analyse = on

    async def reset_channel(self, *, team_id: str, channel_id: str) -> int:
        """`/tutor reset`: every tutor thread of the channel (or DM) starts fresh on its next message."""
        async with self._sessions.begin() as session:
            threads = await repo.threads_in_channel(session, team_id=team_id, channel_id=channel_id)
            count = await repo.forget_threads(session, threads=threads)
        log.info("reset %d threads in %s", count, channel_id)
        self.wake()  # the worker deletes the OpenAI objects
        return count

    async def request_thread_reset(
        self, *, team_id: str, channel_id: str, thread_key: str, user_id: str, key_ts: str
    ) -> bool:
        """The "Start over" button: queue a reset of one thread behind its pending questions."""
        async with self._sessions.begin() as session:
            thread = await repo.find_thread(
                session, team_id=team_id, channel_id=channel_id, thread_ts=thread_key
            )
            if thread is None:
                return False
            press = _button_press(team_id, channel_id, key_ts, thread_key or None, user_id)
            created = await repo.insert_runs(
                session, rows=[run_row(press, kind="reset", thread_id=thread.id, profile_id=None)]
            )
        if created:
            self.wake()
        return bool(created)

    async def reset_thread(self, run: Run) -> None:
        async with self._sessions.begin() as session:
            thread = await session.get(TutorThread, run.thread_id)
            if thread is not None:
                await repo.forget_threads(session, threads=[thread])

    async def channel_status(self, *, team_id: str, channel_id: str) -> ChannelStatus:
        async with self._sessions() as session:
            channel = await repo.get_channel_settings(session, team_id=team_id, channel_id=channel_id)
            profile = await self._profile(session, channel.profile_id if channel else None)
            threads = await repo.threads_in_channel(session, team_id=team_id, channel_id=channel_id)
            files = await repo.count_ready_files(session, team_id=team_id, channel_id=channel_id)
        return ChannelStatus(
            profile_name=profile.name,
            model=profile.model or self._settings.tutor_model,
            active_threads=sum(t.conversation_id is not None for t in threads),
            auto_analysis=bool(channel and channel.auto_analyse),
            files=files,
            custom_instructions=channel.custom_instructions if channel else None,
        )

    async def profiles(self) -> list[Profile]:
        async with self._sessions() as session:
            return list(await repo.all_profiles(session))

    async def choose_profile(self, *, team_id: str, channel_id: str, name: str) -> Profile | None:
        """Select a profile by slug or name for the channel; None if there is no such profile."""
        async with self._sessions.begin() as session:
            wanted = name.strip().lower()
            for profile in await repo.all_profiles(session):
                if wanted in (profile.slug.lower(), profile.name.lower()):
                    settings = await repo.upsert_channel_settings(
                        session, team_id=team_id, channel_id=channel_id
                    )
                    settings.profile_id = profile.id
                    return profile
        return None

    async def set_instructions(self, *, team_id: str, channel_id: str, text: str | None) -> None:
        async with self._sessions.begin() as session:
            settings = await repo.upsert_channel_settings(session, team_id=team_id, channel_id=channel_id)
            settings.custom_instructions = text

    async def welcome(self, *, channel_id: str, thread_ts: str | None) -> None:
        """Suggested prompts when someone opens the tutor's DM (agent view) or pane (assistant view)."""
        await self._slack.set_suggested_prompts(channel_id, SUGGESTED_PROMPTS, thread_ts=thread_ts)

    async def publish_home(self, *, team_id: str, user_id: str) -> None:
        async with self._sessions() as session:
            threads = await repo.recent_threads_of_user(session, team_id=team_id, user_id=user_id, limit=5)
        links = []
        for thread in threads:
            url = (
                await self._slack.permalink(thread.channel_id, thread.thread_ts) if thread.thread_ts else None
            )
            links.append((thread.channel_id, url))
        await self._slack.publish_home(user_id, home_view(links))

    async def show_working(self, run: Run, status: str = "is thinking…") -> None:
        await self._slack.show_status(place_of(run), status, message_ts=run.message_ts)

    async def prepare_run(self, run: Run) -> RunRequest | None:
        """Everything a model run needs: the thread's conversation, sandbox and files, and
        instructions. None when there is nothing to ask (only rejected files, no text)."""
        async with self._sessions() as session:
            thread = await session.get(TutorThread, run.thread_id)
            assert thread is not None
            shared = [
                f for f in await repo.files_of_thread(session, thread_id=thread.id) if f.run_id == run.id
            ]
            if not run.text.strip() and not shared:
                raise errors.EmptyQuestion()
            channel = await repo.get_channel_settings(session, team_id=run.team_id, channel_id=run.channel_id)
            # The run's own (file analyses), the thread's, the channel's choice, or the math tutor.
            chosen = run.profile_id or thread.profile_id or (channel.profile_id if channel else None)
            profile = await self._profile(session, chosen)
        first_turn = thread.conversation_id is None
        conversation_id = thread.conversation_id or await self._new_conversation(thread, profile)
        if first_turn and run.reply_thread_ts and run.channel_id.startswith("D"):
            await self._slack.set_title(run.channel_id, run.reply_thread_ts, run.text)
        container_id, sandbox_reset = None, False
        if "code_interpreter" in profile.tools:
            container_id, sandbox_reset = await self._sandbox(thread)
        await self._files.attach_pending(thread.id, container_id)
        documents = await self.documents.prepare(run, thread, lambda status: self.show_working(run, status))
        async with self._sessions() as session:
            files = list(await repo.files_of_thread(session, thread_id=thread.id))
        mine = [f for f in files if f.run_id == run.id and f.status == "ready"]
        if not run.text.strip() and not mine:
            return None
        name = await self._slack.display_name(run.user_id)
        return RunRequest(
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

    async def _sandbox(self, thread: TutorThread) -> tuple[str, bool]:
        """The thread's live container; a new one (with every file of the thread) if it expired."""
        async with self._sessions() as session:
            ready = [
                f for f in await repo.files_of_thread(session, thread_id=thread.id) if f.status == "ready"
            ]
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

    @staticmethod
    async def _profile(session: AsyncSession, profile_id: int | None) -> Profile:
        """That profile, or the math tutor."""
        profile = await session.get(Profile, profile_id) if profile_id else None
        profile = profile or await repo.get_profile(session, slug=DEFAULT_PROFILE)
        if profile is None:
            raise RuntimeError("no tutor profile: run `slack-tutor migrate`")
        return profile

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


def _button_press(
    team_id: str, channel_id: str, key_ts: str, thread_ts: str | None, user_id: str
) -> Question:
    """A button press as a question with no text, keyed on `key_ts`."""
    return Question(
        team_id=team_id,
        channel_id=channel_id,
        message_ts=key_ts,
        thread_key=thread_ts or "",
        reply_thread_ts=thread_ts,
        user_id=user_id,
        text="",
        is_mention=False,
        is_dm=False,
    )
