"""The run-poller: claims due runs under a lease, drives each one step further, and hands
finished responses to the replier.

A run moves queued → creating → polling → replying → done|failed (`unknown` after a create whose
outcome we could not see). Every step starts from what the row says, so any worker can pick up a
run whose worker died once its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import errors
from bot.ai import ModelReply, OpenAIGateway
from bot.config import Settings
from bot.reply import Replier
from bot.tutor import Tutor, marker
from db import repo
from db.models import Cleanup, Run, utcnow

log = logging.getLogger(__name__)

#: Slack clears a thread status after two minutes without a message.
STATUS_REFRESH = timedelta(seconds=90)
CLAIM_BATCH = 20
#: A claimed cleanup is left alone by other workers this long.
CLEANUP_RETRY = timedelta(seconds=120)


class Poller:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        tutor: Tutor,
        replier: Replier,
        ai: OpenAIGateway,
        settings: Settings,
        owner: str | None = None,
    ) -> None:
        self._sessions = sessions
        self._tutor = tutor
        self._replier = replier
        self._ai = ai
        self._settings = settings
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wakeup = asyncio.Event()
        self._cleanup_wakeup = asyncio.Event()
        self._lease = timedelta(seconds=settings.tutor_lease_seconds)

    def wake(self) -> None:
        """Look for work now (a question or a reset was just stored in this process)."""
        self._wakeup.set()
        self._cleanup_wakeup.set()

    async def run_forever(self) -> None:
        log.info("run-poller %s started", self.owner)
        cleaner = asyncio.create_task(self._clean_forever(), name="openai-cleanup")
        try:
            await self._loop(self.tick, self._wakeup)
        finally:
            cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleaner

    async def _clean_forever(self) -> None:
        """Deletions after resets run beside the runs, so a hanging OpenAI delete delays no answer."""
        await self._loop(self._clean_up, self._cleanup_wakeup)

    async def _loop(self, work: Callable[[], Awaitable[int]], wakeup: asyncio.Event) -> None:
        idle = self._settings.tutor_poll_interval / 2
        while True:
            try:
                busy = await work()
            except Exception:
                log.exception("run-poller: %s failed; retrying", work.__name__)
                busy = 0
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=idle)
                wakeup.clear()

    async def tick(self) -> int:
        """Claim what is due and drive each claimed run one step; returns how many."""
        now = utcnow()
        async with self._sessions.begin() as session:
            runs = await repo.claim_due_runs(
                session, owner=self.owner, now=now, lease_until=now + self._lease, limit=CLAIM_BATCH
            )
        if runs:
            await asyncio.gather(*(self._drive(run) for run in runs))
        return len(runs)

    async def _clean_up(self) -> int:
        """Delete what resets left at OpenAI; best effort, retried with backoff."""
        now = utcnow()
        async with self._sessions.begin() as session:
            due = await repo.claim_cleanups(session, now=now, retry_at=now + CLEANUP_RETRY, limit=CLAIM_BATCH)
        for cleanup in due:
            delete = {
                "conversation": self._ai.delete_conversation,
                "container": self._ai.delete_container,
                "file": self._ai.delete_file,
            }[cleanup.kind]
            try:
                await delete(cleanup.object_id)
                values: dict[str, Any] = {"done_at": utcnow(), "last_error": None}
            except errors.TutorError as exc:
                delay = min(3600.0, 30.0 * 2 ** min(cleanup.attempts, 7))
                values = {"last_error": exc.code, "next_attempt_at": self._later(delay)}
            async with self._sessions.begin() as session:
                await session.execute(update(Cleanup).where(Cleanup.id == cleanup.id).values(**values))
        return len(due)

    async def _drive(self, run: Run) -> None:
        async with self._heartbeat(run.id):
            try:
                await self._step(run)
            except errors.TutorError as exc:
                await self._on_error(run, exc)
            except LeaseLost:
                raise
            except Exception as exc:
                log.exception("run %s: unexpected error in step %s", run.id, run.status)
                await self._on_error(run, errors.OpenAIUnavailable(type(exc).__name__))

    async def _step(self, run: Run) -> None:
        if run.kind == "offer":
            await self._replier.offer(run)
            await self._save(run, status="done", finished_at=utcnow())
        elif run.kind == "reset":
            await self._tutor.reset_thread(run)
            await self._replier.reset_notice(run)
            await self._save(run, status="done", finished_at=utcnow())
        elif run.status == "queued":
            await self._create(run)
        elif run.status in ("creating", "unknown"):
            await self._reconcile(run)
        elif run.status == "polling":
            await self._poll(run)
        elif run.status == "replying":
            await self._reply(run, await self._load_reply(run))

    async def _create(self, run: Run) -> None:
        if run.status_shown_at is None:
            await self._tutor.show_working(run)
            await self._save(run, status_shown_at=utcnow(), keep_lease=True)
        request = await self._tutor.prepare_run(run)
        if request is None:  # nothing to ask the model: only files it can't use
            await self._save(run, status="replying", keep_lease=True)
            await self._reply(run, None)
            return
        # Record the intent before the non-idempotent call: a crash from here on means "unknown".
        await self._save(run, status="creating", create_started_at=utcnow(), keep_lease=True)
        try:
            started = await self._ai.start_run(request)
        except errors.AmbiguousCreate as exc:
            log.warning("run %s: create outcome unknown (%s); reconciling", run.id, exc.detail)
            await self._save(run, status="unknown", next_attempt_at=self._later(5))
            return
        except errors.TutorError:
            await self._save(run, status="queued", keep_lease=True)
            raise
        log.info("run %s: response %s started", run.id, started.response_id)
        await self._save(
            run,
            status="polling",
            response_id=started.response_id,
            attempts=0,  # retries are counted per step
            next_attempt_at=self._later(self._interval),
        )

    async def _reconcile(self, run: Run) -> None:
        """A create may have reached OpenAI: look for its answer in the conversation before re-creating."""
        conversation_id = await self._tutor.conversation_of(run)
        found = (
            await self._ai.find_answer(conversation_id, marker(run.message_ts)) if conversation_id else None
        )
        if found is not None:
            log.info("run %s: found the answer of an unconfirmed create", run.id)
            await self._save(run, status="replying", keep_lease=True)
            await self._reply(run, found)
            return
        started = run.create_started_at or run.created_at
        if utcnow() - started >= timedelta(seconds=self._settings.tutor_reconcile_window):
            log.warning("run %s: no trace of the earlier create; creating again", run.id)
            await self._save(run, status="queued", next_attempt_at=utcnow())
        else:
            await self._save(
                run, next_attempt_at=self._later(min(10.0, self._settings.tutor_reconcile_window))
            )

    async def _poll(self, run: Run) -> None:
        assert run.response_id is not None
        reply = await self._ai.get_run(run.response_id)
        if not reply.finished:
            started = run.create_started_at or run.created_at
            if utcnow() - started < timedelta(seconds=self._settings.tutor_run_timeout):
                await self._keep_status_fresh(run, reply)
                await self._save(run, next_attempt_at=self._later(self._interval))
                return
            log.warning("run %s: response %s exceeded the time limit; cancelling", run.id, run.response_id)
            reply = await self._ai.cancel_run(run.response_id)
            if not reply.finished:
                reply = ModelReply(response_id=run.response_id, status="cancelled")
        await self._save(run, status="replying", keep_lease=True)
        await self._reply(run, reply)

    async def _reply(self, run: Run, reply: ModelReply | None) -> None:
        await self._replier.deliver(run, reply)
        failed = bool(run.error_code) or (reply is not None and reply.failure() is not None)
        await self._save(run, status="failed" if failed else "done", finished_at=utcnow())
        log.info("run %s: %s", run.id, "failed" if failed else "answered")

    async def _load_reply(self, run: Run) -> ModelReply | None:
        if run.error_code or (run.response_id is None and run.create_started_at is None):
            return None
        if run.response_id:
            return await self._ai.get_run(run.response_id)
        conversation_id = await self._tutor.conversation_of(run)
        return (
            await self._ai.find_answer(conversation_id, marker(run.message_ts)) if conversation_id else None
        )

    async def _keep_status_fresh(self, run: Run, reply: ModelReply) -> None:
        if run.reply_thread_ts and (
            run.status_shown_at is None or utcnow() - run.status_shown_at > STATUS_REFRESH
        ):
            await self._tutor.show_working(run, "is running code…" if reply.ran_code else "is thinking…")
            await self._save(run, status_shown_at=utcnow(), keep_lease=True)

    async def _on_error(self, run: Run, exc: errors.TutorError) -> None:
        attempts = run.attempts + 1
        if isinstance(exc, errors.ContainerExpired):
            await self._tutor.forget_container(run.thread_id)
        elif isinstance(exc, errors.ContextLost) and run.status == "queued":
            await self._tutor.forget_conversation(run.thread_id)
        if exc.retryable and attempts < self._settings.tutor_max_attempts:
            delay = exc.retry_after if exc.retry_after is not None else min(60.0, 2.0 ** (attempts - 1))
            log.info("run %s: %s; retry %s in %.1fs", run.id, exc.code, attempts, delay)
            await self._save(run, attempts=attempts, next_attempt_at=self._later(delay))
            return
        if run.status == "replying" and isinstance(exc, errors.SlackDeliveryFailed):
            # Slack itself refuses the thread: nobody to tell.
            log.error("run %s: giving up on delivery: %s", run.id, exc.detail)
            await self._save(
                run, status="failed", attempts=attempts, error_code=exc.code, finished_at=utcnow()
            )
            return
        log.warning("run %s: failed with %s (%s)", run.id, exc.code, exc.detail)
        await self._save(
            run,
            status="replying",
            attempts=0,
            error_code=exc.code,
            error_message=exc.detail,
            next_attempt_at=utcnow(),
        )
        self.wake()

    @property
    def _interval(self) -> float:
        return self._settings.tutor_poll_interval

    @staticmethod
    def _later(seconds: float) -> datetime:
        return utcnow() + timedelta(seconds=seconds)

    async def _save(self, run: Run, *, keep_lease: bool = False, **values: Any) -> None:
        """Update the run if we still hold its lease; by default also release the lease."""
        if not keep_lease:
            values.update(lease_owner=None, lease_expires_at=None)
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Run)
                .where(Run.id == run.id, Run.lease_owner == self.owner)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        if getattr(result, "rowcount", 0) != 1:
            raise LeaseLost(run.id)
        for key, value in values.items():
            setattr(run, key, value)

    @contextlib.asynccontextmanager
    async def _heartbeat(self, run_id: int) -> AsyncIterator[None]:
        """Extend the lease while a step runs, so a slow upload isn't mistaken for a dead worker."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self._lease.total_seconds() / 3)
                async with self._sessions.begin() as session:
                    await repo.extend_lease(
                        session, run_id=run_id, owner=self.owner, lease_until=utcnow() + self._lease
                    )

        task = asyncio.create_task(beat())
        try:
            yield
        except LeaseLost:
            log.warning("run %s: lease lost to another worker; leaving it to them", run_id)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class LeaseLost(Exception):
    """Another worker took the run over (our lease expired); stop touching it."""
