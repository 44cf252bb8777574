"""The tutor's use cases for the handlers: accept a question, buttons, feedback, settings, the Home tab.

They store work for the run-poller and wake it (`bot.notifier`); preparing and answering a run is
the poller's (`bot.prepare`, `bot.reply`). Talks to the database and Slack; knows neither HTTP nor
Bolt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.inbox import DATA_PROFILE, Inbox, Question, run_row
from bot.library import Library
from bot.notifier import WakeUp
from bot.privacy import Privacy
from bot.ui import feedback_line, feedback_modal, home_view
from bot.usage import FEEDBACK_DAYS, BudgetScope, Limits, UsageLedger, UsageReport
from bot.workspaces import Workspaces
from db import repo
from db.models import DEFAULT_PROFILE, Profile, Rating, RunKind, utcnow

log = logging.getLogger(__name__)

#: The error code of the runs an uninstall ended.
UNINSTALLED = "uninstalled"
SUGGESTED_PROMPTS = (
    ("Solve an equation", "Solve 3x + 11 = 14 step by step"),
    ("Explain with a plot", "Explain derivatives with a plot"),
    ("Analyse my data", "Analyse a CSV I'll share"),
)


@dataclass(frozen=True)
class ChannelStatus:
    profile_name: str
    model: str
    active_threads: int
    auto_analysis: bool
    files: int
    custom_instructions: str | None


class Tutor:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        workspaces: Workspaces,
        settings: Settings,
        wake: WakeUp,
        drop_gateway: Callable[[str], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._workspaces = workspaces
        #: Drops the workspace's cached gateway (distribution mode) once it uninstalled the app.
        #: Distribution mode: an uninstalled workspace's cached gateway is never handed out again.
        self._drop_gateway = drop_gateway
        self._settings = settings
        self._inbox = Inbox(sessions)
        self.library = Library(sessions=sessions)
        self.usage = UsageLedger(sessions=sessions, settings=settings)
        self.privacy = Privacy(sessions=sessions, wake=wake)
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
                    run_row(
                        press, kind=RunKind.ANSWER, thread_id=thread.id, profile_id=data.id if data else None
                    )
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
                session, rows=[run_row(press, kind=RunKind.RESET, thread_id=thread.id, profile_id=None)]
            )
        if created:
            self.wake()
        return bool(created)

    async def request_work(
        self, *, team_id: str, channel_id: str, thread_key: str, user_id: str, key_ts: str, answer_run: str
    ) -> bool:
        """The "Show work" button: queue showing that answer's code to the person who pressed."""
        async with self._sessions.begin() as session:
            thread = await repo.find_thread(
                session, team_id=team_id, channel_id=channel_id, thread_ts=thread_key
            )
            if thread is None:
                return False
            press = _button_press(team_id, channel_id, key_ts, thread_key or None, user_id, text=answer_run)
            created = await repo.insert_runs(
                session, rows=[run_row(press, kind=RunKind.WORK, thread_id=thread.id, profile_id=None)]
            )
        if created:
            self.wake()
        return bool(created)

    async def record_feedback(
        self, *, team_id: str, channel_id: str, user_id: str, run_uuid: str, rating: Rating
    ) -> bool:
        """A thumbs up or down on an answer: this person's rating of it, replacing their last.
        False (nothing stored) unless the run is an answer given in that channel."""
        async with self._sessions.begin() as session:
            run = await repo.run_by_uuid(session, team_id=team_id, channel_id=channel_id, run_uuid=run_uuid)
            if run is None or run.kind != RunKind.ANSWER:
                log.warning("ignored feedback on %s: no answer of that channel", channel_id)
                return False
            await repo.record_feedback(
                session,
                run_uuid=run_uuid,
                team_id=team_id,
                channel_id=channel_id,
                user_id=user_id,
                rating=rating,
                at=utcnow(),
            )
        log.info("feedback %s on run %s", rating, run.id)
        return True

    async def ask_what_was_wrong(self, *, team_id: str, trigger_id: str, run_uuid: str) -> None:
        """After a thumbs-down: the small modal asking what was wrong (answered in `note_what_was_wrong`)."""
        slack = await self._workspaces.gateway(team_id)
        await slack.open_view(trigger_id, feedback_modal(run_uuid))

    async def note_what_was_wrong(
        self, *, team_id: str, user_id: str, run_uuid: str, comment: str | None
    ) -> None:
        """The modal's answer goes on that person's rating of the answer (the text is never logged)."""
        async with self._sessions.begin() as session:
            stored = await repo.set_feedback_comment(
                session, run_uuid=run_uuid, team_id=team_id, user_id=user_id, comment=comment, at=utcnow()
            )
        if not stored:
            log.warning("ignored a feedback comment without a rating to go with it")

    async def channel_status(self, *, team_id: str, channel_id: str) -> ChannelStatus:
        async with self._sessions() as session:
            channel = await repo.get_channel_settings(session, team_id=team_id, channel_id=channel_id)
            profile = await repo.profile_or_default(
                session, profile_id=channel.profile_id if channel else None, default_slug=DEFAULT_PROFILE
            )
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

    async def usage_report(self, *, team_id: str, channel_id: str, user_id: str) -> UsageReport:
        """`/tutor usage`: this channel and the caller; a workspace admin sees the workspace too."""
        admin = await (await self._workspaces.gateway(team_id)).is_admin(user_id)
        return await self.usage.report(
            team_id=team_id, channel_id=channel_id, user_id=user_id, workspace=admin
        )

    async def set_budget(
        self, *, team_id: str, channel_id: str, user_id: str, scope: BudgetScope, tokens: int | None
    ) -> Limits | None:
        """`/tutor budget user|channel N|default` by a workspace admin: the limits now in force
        here; None (and nothing changed) when `user_id` is not an admin."""
        if not await (await self._workspaces.gateway(team_id)).is_admin(user_id):
            log.info("/tutor budget refused for %s: not a workspace admin", user_id)
            return None
        await self.usage.set_limit(team_id=team_id, channel_id=channel_id, scope=scope, tokens=tokens)
        log.info("budget %s in %s set to %s by %s", scope, channel_id, tokens, user_id)
        return await self.usage.limits(team_id=team_id, channel_id=channel_id)

    async def welcome(self, *, team_id: str, channel_id: str, thread_ts: str | None) -> None:
        """Suggested prompts when someone opens the tutor's DM (agent view) or pane (assistant view)."""
        slack = await self._workspaces.gateway(team_id)
        await slack.set_suggested_prompts(channel_id, SUGGESTED_PROMPTS, thread_ts=thread_ts)

    async def publish_home(self, *, team_id: str, user_id: str) -> None:
        slack = await self._workspaces.gateway(team_id)
        async with self._sessions() as session:
            threads = await repo.recent_threads_of_user(session, team_id=team_id, user_id=user_id, limit=5)
            since = utcnow() - timedelta(days=FEEDBACK_DAYS)
            feedback = await repo.feedback_summary(session, team_id=team_id, since=since)
        links = []
        for thread in threads:
            url = await slack.permalink(thread.channel_id, thread.thread_ts) if thread.thread_ts else None
            links.append((thread.channel_id, url))
        await slack.publish_home(
            user_id, home_view(links, feedback=feedback_line(feedback, days=FEEDBACK_DAYS))
        )

    async def workspace_uninstalled(self, *, team_id: str) -> None:
        """`app_uninstalled` / `tokens_revoked`: forget the workspace's installation and bot token,
        and end its unfinished runs without another Slack call (their tokens are dead). The one
        place that acts on an uninstall. Then the workspace's data goes, as with retention:
        questions and threads here, conversations, responses, files and libraries at OpenAI."""
        async with self._sessions.begin() as session:
            removed = await repo.delete_installations(session, team_id=team_id)
            stopped = await repo.stop_workspace_runs(session, team_id=team_id, code=UNINSTALLED)
        if self._drop_gateway is not None:
            self._drop_gateway(team_id)
        log.info(
            "workspace %s uninstalled the app: %d bot tokens deleted, %d runs stopped",
            team_id,
            removed,
            stopped,
        )
        forgotten = await self.privacy.forget_workspace(team_id)
        log.info(
            "workspace %s: deleted %d questions, %d threads and %d files (OpenAI copies queued)",
            team_id,
            forgotten.questions,
            forgotten.threads,
            forgotten.files,
        )


def _button_press(
    team_id: str, channel_id: str, key_ts: str, thread_ts: str | None, user_id: str, *, text: str = ""
) -> Question:
    """A button press as a question (with no text but what the press carries), keyed on `key_ts`."""
    return Question(
        team_id=team_id,
        channel_id=channel_id,
        message_ts=key_ts,
        thread_key=thread_ts or "",
        reply_thread_ts=thread_ts,
        user_id=user_id,
        text=text,
        is_mention=False,
        is_dm=False,
    )
