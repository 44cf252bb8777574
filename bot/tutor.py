"""The tutor's use cases: accept a question, prepare a model run for it.

Talks to the database, OpenAI (`bot.ai`) and Slack (`bot.slack_api`); knows neither HTTP nor Bolt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.ai import OpenAIGateway, RunRequest
from bot.config import Settings
from bot.inbox import Inbox, Question
from bot.slack_api import Place, SlackGateway
from db import repo
from db.models import Profile, Run, TutorThread

log = logging.getLogger(__name__)

DEFAULT_PROFILE = "math"

SLACK_STYLE = (
    "You are answering inside Slack. Slack renders only simple Markdown: use short paragraphs, "
    "bullet lists, **bold**, `inline code` and fenced code blocks; avoid tables and LaTeX "
    "(write formulas as plain text such as 3x + 11 = 14, or in code spans). "
    "Keep answers focused; show the key steps of a calculation. "
    "When you draw a chart, save it as a PNG file in /mnt/data and cite it: it is attached to the thread."
)
MARKER_NOTE = (
    "Each user turn starts with a tag like [slack message 1700000000.000100]. It is bookkeeping: "
    "ignore it and never repeat it."
)


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
        self._inbox = Inbox(sessions, default_profile=DEFAULT_PROFILE)
        self.wake = wake

    async def accept(self, question: Question) -> bool:
        """Store the question as a queued run if the tutor should answer it; False when it shouldn't
        (not addressed to the tutor) or when this Slack message already has a run."""
        accepted = await self._inbox.store(question)
        if accepted:
            log.info("question %s/%s queued", question.channel_id, question.message_ts)
            self.wake()
        return accepted

    async def show_working(self, run: Run, status: str = "is thinking…") -> None:
        await self._slack.show_status(place_of(run), status, message_ts=run.message_ts)

    async def prepare_run(self, run: Run) -> RunRequest:
        """Everything a model run needs: the thread's conversation and sandbox, and instructions."""
        async with self._sessions() as session:
            thread = await session.get(TutorThread, run.thread_id)
            assert thread is not None
            profile = await self._profile(session, thread)
        conversation_id = thread.conversation_id or await self._new_conversation(thread, profile)
        container_id, sandbox_reset = None, False
        if "code_interpreter" in profile.tools:
            container_id, fresh = await self._ai.ensure_container(
                thread.container_id,
                name=f"slack-tutor {thread.team_id}:{thread.channel_id}:{thread.thread_ts}",
            )
            sandbox_reset = fresh and thread.container_id is not None
            if container_id != thread.container_id:
                await self._update_thread(thread.id, container_id=container_id)
        name = await self._slack.display_name(run.user_id)
        return RunRequest(
            model=profile.model or self._settings.tutor_model,
            conversation_id=conversation_id,
            instructions=build_instructions(profile, display_name=name, sandbox_reset=sandbox_reset),
            input_text=f"{marker(run.message_ts)} {run.text}".strip(),
            container_id=container_id,
            metadata={
                "tutor_run": run.run_uuid,
                "slack_thread": f"{run.team_id}:{run.channel_id}:{thread.thread_ts}",
                "profile": profile.slug,
            },
            reasoning_effort=self._settings.tutor_reasoning_effort,
            max_output_tokens=self._settings.tutor_max_output_tokens,
        )

    async def forget_container(self, thread_id: int) -> None:
        await self._update_thread(thread_id, container_id=None)

    async def forget_conversation(self, thread_id: int) -> None:
        await self._update_thread(thread_id, conversation_id=None)

    async def conversation_of(self, run: Run) -> str | None:
        async with self._sessions() as session:
            thread = await session.get(TutorThread, run.thread_id)
            return thread.conversation_id if thread else None

    async def _profile(self, session: AsyncSession, thread: TutorThread) -> Profile:
        profile = await session.get(Profile, thread.profile_id) if thread.profile_id else None
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


def build_instructions(profile: Profile, *, display_name: str, sandbox_reset: bool = False) -> str:
    """The full instructions for one run: profile, then per-run context (never carried over by OpenAI)."""
    parts = [profile.instructions.strip(), SLACK_STYLE]
    if display_name:
        parts.append(f"The person asking is {display_name}. Address them by that name.")
    if sandbox_reset:
        parts.append(
            "Your Python sandbox was reset since the last turn: earlier variables are gone and files "
            "must be loaded again."
        )
    parts.append(MARKER_NOTE)
    return "\n\n".join(parts)
