"""The run-poller: claims due runs under a lease, drives each one step further, and hands
finished responses to the replier.

A run moves queued → creating → polling → replying → done|failed (`unknown` after a create whose
outcome we could not see). Every step starts from what the row says, so any worker can pick up a
run whose worker died. A library run (`bot.library`) indexes its files and reports in one step.

Each claimed run is driven by its own task, at most `TUTOR_WORKER_CONCURRENCY` at once: a run
whose OpenAI or Slack call hangs holds one slot until that call's deadline, never the loop that
claims the others. Leases are extended for all of a worker's runs by one heart-beat, released on
shutdown, and taken over at once from a worker known to be dead (see `db.leases`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from bot import errors
from bot.ai import ModelReply, OpenAIGateway
from bot.config import Settings
from bot.logs import bind, log_context
from bot.metrics import Metrics
from bot.reply import SLOW_NOTICE, Replier
from bot.tutor import Tutor, marker
from db import leases, repo
from db.models import Cleanup, Run, utcnow
from db.notify import WorkListener

log = logging.getLogger(__name__)

#: Slack clears a thread status after two minutes without a message.
STATUS_REFRESH = timedelta(seconds=90)
CLAIM_BATCH = 20
#: A claimed cleanup is left alone by other workers this long.
CLEANUP_RETRY = timedelta(seconds=120)
#: How often a PostgreSQL worker looks for runs held by dead workers.
RESCUE_EVERY = 2.0
#: First look for the answer of a create whose outcome we could not see.
RECONCILE_FIRST = 1.0
#: While an earlier create still holds the conversation, look for its answer this often.
RECONCILE_EVERY = 2.0
#: A shutdown step that talks to the database gives up after this long (a dead database must
#: not keep a stopping process alive).
SHUTDOWN_STEP = 5.0
#: Runs that are still answering a question (not delivering, not done).
ANSWERING = frozenset({"queued", "creating", "unknown", "polling"})
#: The run deadline of the step this task is in, lifted once the answer is being delivered.
_DEADLINE: ContextVar[asyncio.Timeout | None] = ContextVar("run_deadline", default=None)


class Poller:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        tutor: Tutor,
        replier: Replier,
        ai: OpenAIGateway,
        settings: Settings,
        owner: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._engine = engine
        self._tutor = tutor
        self._replier = replier
        self._ai = ai
        self._settings = settings
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wakeup = asyncio.Event()
        self._cleanup_wakeup = asyncio.Event()
        self._lease = timedelta(seconds=settings.tutor_lease_seconds)
        self._active: dict[int, asyncio.Task[None]] = {}
        #: Runs whose lease could not be released (database down): released by the heart-beat.
        self._to_release: set[int] = set()
        self._liveness: AsyncConnection | None = None
        self._postgres = self._engine.dialect.name == "postgresql"
        self._metrics = metrics or Metrics()
        #: time.monotonic() of the claim loop's last iteration: /healthz says when it stalls.
        self._last_loop: float | None = None
        #: PostgreSQL: NOTIFY from any process wakes this worker at once (polling stays the fallback).
        self.listener = (
            WorkListener(settings.database_listen_url or settings.database_url, self.wake)
            if self._postgres
            else None
        )

    def wake(self) -> None:
        """Look for work now (a question or a reset was just stored in this process)."""
        self._wakeup.set()
        self._cleanup_wakeup.set()

    def seconds_since_loop(self) -> float | None:
        """How long ago the claim loop last came round; None before the poller started."""
        return None if self._last_loop is None else time.monotonic() - self._last_loop

    @property
    def active_runs(self) -> int:
        return len(self._active)

    async def run_forever(self) -> None:
        self._last_loop = time.monotonic()
        log.info(
            "run-poller %s started (%d runs at once)", self.owner, self._settings.tutor_worker_concurrency
        )
        await self._take_over_at_start()
        helpers = [
            asyncio.create_task(self._loop(self._clean_up, self._cleanup_wakeup), name="openai-cleanup"),
            asyncio.create_task(self._heartbeat_forever(), name="run-heartbeat"),
        ]
        if self.listener is not None:
            helpers.append(asyncio.create_task(self.listener.run_forever(), name="work-listener"))
        try:
            await self._claim_forever()
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._hand_back()

    async def _claim_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_rescue = 0.0
        while True:
            self._last_loop = time.monotonic()
            free = self._settings.tutor_worker_concurrency - len(self._active)
            claimed = 0
            if free > 0:
                try:
                    if self._postgres and loop.time() >= next_rescue:
                        next_rescue = loop.time() + RESCUE_EVERY
                        await self._rescue_dead_workers()
                    claimed = await self._claim(free)
                except (SQLAlchemyError, OSError) as exc:
                    log.warning("run-poller: database unavailable (%s); retrying", _describe(exc))
            # A full batch means more may be due: claim again at once; idle only once the queue
            # (or our free slots) ran out.
            if free <= 0 or claimed < min(free, CLAIM_BATCH):
                await self._idle()

    async def _idle(self) -> None:
        await _woken(self._wakeup, within=self._interval / 2)

    async def _claim(self, free: int) -> int:
        now = utcnow()
        async with self._sessions.begin() as session:
            runs = await leases.claim_due_runs(
                session,
                owner=self.owner,
                now=now,
                lease_until=now + self._lease,
                limit=min(free, CLAIM_BATCH),
            )
        for run in runs:
            task = asyncio.create_task(self._drive(run), name=f"run-{run.id}")
            self._active[run.id] = task
            task.add_done_callback(functools.partial(self._finished, run.id))
        return len(runs)

    def _finished(self, run_id: int, _task: asyncio.Task[None]) -> None:
        del self._active[run_id]
        self._wakeup.set()  # a slot is free

    async def _loop(self, work: Callable[[], Awaitable[int]], wakeup: asyncio.Event) -> None:
        idle = self._settings.tutor_poll_interval / 2
        while True:
            try:
                busy = await work()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("run-poller: %s: database unavailable (%s)", work.__name__, _describe(exc))
                busy = 0
            except Exception:
                log.exception("run-poller: %s failed; retrying", work.__name__)
                busy = 0
            if not busy:
                await _woken(wakeup, within=idle)

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
                "vector_store": self._ai.delete_vector_store,
                "vector_store_file": self._ai.delete_vector_store_file,
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

    # Leases and liveness

    async def _take_over_at_start(self) -> None:
        """A restarted worker resumes interrupted runs now, not when their dead leases expire."""
        try:
            if self._postgres:
                await self._hold_liveness()
                await self._rescue_dead_workers()
            else:
                # SQLite has one worker process: every lease left in the file is a dead one's.
                async with self._sessions.begin() as session:
                    count = await leases.release_leases(session)
                if count:
                    log.info("run-poller: resuming %d runs of a stopped worker", count)
                    self._metrics.rescued(count, reason="restart")
        except (SQLAlchemyError, OSError) as exc:
            log.warning("run-poller: database unavailable at start (%s)", _describe(exc))

    async def _hold_liveness(self) -> None:
        """PostgreSQL: hold our advisory lock on a connection of its own (re-taken if it drops)."""
        if self._liveness is not None:
            try:
                await self._liveness.exec_driver_sql("SELECT 1")
                return
            except (SQLAlchemyError, OSError):
                with contextlib.suppress(Exception):
                    await self._liveness.invalidate()
                self._liveness = None
        connection = await self._engine.connect()
        try:
            await leases.hold_liveness_lock(connection, owner=self.owner)
        except BaseException:
            await connection.close()
            raise
        self._liveness = connection

    async def _rescue_dead_workers(self) -> None:
        async with self._sessions.begin() as session:
            dead = await leases.dead_owners(session, me=self.owner, now=utcnow())
            count = await leases.release_leases(session, owners=dead) if dead else 0
        if count:
            log.warning("run-poller: took over %d runs of stopped workers %s", count, ", ".join(dead))
            self._metrics.rescued(count, reason="dead_worker")
            self._wakeup.set()

    async def _heartbeat_forever(self) -> None:
        """Extend the leases of every run this worker drives, so a slow step isn't taken for dead."""
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                if self._postgres:
                    await self._hold_liveness()
                async with self._sessions.begin() as session:
                    await leases.extend_leases(
                        session,
                        run_ids=list(self._active),
                        owner=self.owner,
                        lease_until=utcnow() + self._lease,
                    )
                    if self._to_release:
                        await leases.release_leases(session, owners=[self.owner], run_ids=self._to_release)
                self._to_release.clear()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("run-poller: heart-beat failed (%s)", _describe(exc))

    async def _hand_back(self) -> None:
        """Shutdown: finish what finishes within the grace period, release the rest to the next worker."""
        running = list(self._active.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=self._settings.tutor_shutdown_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            async with asyncio.timeout(SHUTDOWN_STEP), self._sessions.begin() as session:
                count = await leases.release_leases(session, owners=[self.owner])
            log.info("run-poller %s stopped; %d runs handed back", self.owner, count)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("run-poller: could not hand runs back (%s); their leases will expire", _describe(exc))
        if self._liveness is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SHUTDOWN_STEP):
                    await self._liveness.close()
            self._liveness = None

    # Driving one run

    async def _drive(self, run: Run) -> None:
        with log_context(
            run_id=run.id,
            team=run.team_id,
            channel=run.channel_id,
            thread_ts=run.reply_thread_ts or run.message_ts,
            response_id=run.response_id,
        ):
            await self._drive_in_context(run)

    async def _drive_in_context(self, run: Run) -> None:
        try:
            try:
                if self._out_of_time(run):
                    await self._time_out(run)
                else:
                    await self._step_in_time(run)
            except errors.TutorError as exc:
                await self._on_error(run, exc)
            except (LeaseLost, asyncio.CancelledError):
                raise
            except SQLAlchemyError as exc:
                log.warning("run %s: database error in step %s: %s", run.id, run.status, _describe(exc))
                await self._on_error(run, errors.InternalError(type(exc).__name__))
            except Exception as exc:
                log.exception("run %s: unexpected error in step %s", run.id, run.status)
                await self._on_error(run, errors.InternalError(type(exc).__name__))
        except LeaseLost:
            log.warning("run %s: lease lost to another worker; leaving it to them", run.id)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("run %s: could not record progress (%s); released later", run.id, _describe(exc))
            self._to_release.add(run.id)

    async def _step(self, run: Run) -> None:
        if run.kind == "offer":
            await self._replier.offer(run)
            await self._save(run, status="done", finished_at=utcnow())
        elif run.kind == "reset":
            await self._tutor.reset_thread(run)
            await self._replier.reset_notice(run)
            await self._save(run, status="done", finished_at=utcnow())
        elif run.kind == "library" and run.status == "queued":
            outcome = await self._tutor.library.index(
                run, lambda status: self._tutor.show_working(run, status)
            )
            await self._replier.notify(run, "library", outcome.message())
            await self._replier.deliver(run, None)  # clears a DM's status
            await self._save(run, status="done", finished_at=utcnow())
        elif run.status == "queued":
            await self._create(run)
        elif run.status in ("creating", "unknown"):
            await self._reconcile(run)
        elif run.status == "polling":
            await self._poll(run)
        elif run.status == "replying":
            await self._reply(run, await self._load_reply(run))

    async def _step_in_time(self, run: Run) -> None:
        """A step of an unanswered question ends at the run's deadline, even inside a hung call."""
        if run.kind != "answer" or run.status not in ANSWERING:
            await self._step(run)
            return
        try:
            async with asyncio.timeout(self._time_left(run)) as deadline:
                token = _DEADLINE.set(deadline)
                try:
                    await self._step(run)
                finally:
                    _DEADLINE.reset(token)
        except TimeoutError:
            if not deadline.expired():
                raise
            await self._time_out(run)

    def _out_of_time(self, run: Run) -> bool:
        """The run timeout counts from the question's arrival, whatever state the run is in."""
        return run.kind == "answer" and run.status in ANSWERING and self._time_left(run) <= 0

    def _time_left(self, run: Run) -> float:
        deadline = run.created_at + timedelta(seconds=self._settings.tutor_run_timeout)
        return (deadline - utcnow()).total_seconds()

    async def _time_out(self, run: Run) -> None:
        log.warning(
            "run %s: no answer after %.0fs (%s); giving up",
            run.id,
            self._settings.tutor_run_timeout,
            run.status,
        )
        if run.status != "polling" or run.response_id is None:
            raise errors.RunTimedOut(f"timed out while {run.status}")
        reply: ModelReply | None = None
        with contextlib.suppress(errors.TutorError):
            reply = await self._ai.cancel_run(run.response_id)
        if reply is None or not reply.finished:
            reply = ModelReply(response_id=run.response_id, status="cancelled")
        await self._save(run, status="replying", keep_lease=True)
        await self._reply(run, reply)

    async def _create(self, run: Run) -> None:
        again = run.status in ("unknown", "creating")  # an earlier create may have reached OpenAI
        if run.status_shown_at is None:
            await self._tutor.show_working(run)
            await self._save(run, status_shown_at=utcnow(), keep_lease=True)
        request = await self._tutor.prepare_run(run)
        if request is None:  # nothing to ask the model: only files it can't use
            await self._save(run, status="replying", keep_lease=True)
            await self._reply(run, None)
            return
        # Record the intent before the non-idempotent call: a crash from here on means "unknown".
        await self._save(
            run, status="creating", create_started_at=run.create_started_at or utcnow(), keep_lease=True
        )
        try:
            started = await self._ai.start_run(request)
        except errors.ConversationBusy:
            if again:
                # OpenAI still runs the earlier create on this conversation: wait for its answer.
                log.info("run %s: the earlier create is still running; waiting for its answer", run.id)
                await self._retry_later(run, RECONCILE_EVERY, status="unknown")
                return
            await self._save(run, status="queued", keep_lease=True)
            raise
        except errors.AmbiguousCreate:
            raise
        except errors.TutorError:
            await self._save(run, status="queued", keep_lease=True)
            raise
        bind(response_id=started.response_id)
        log.info("run %s: response %s started", run.id, started.response_id)
        await self._save(
            run,
            status="polling",
            response_id=started.response_id,
            attempts=0,  # retries are counted per step
            failing_since=None,
            next_attempt_at=self._later(self._interval),
        )

    async def _reconcile(self, run: Run) -> None:
        """A create may have reached OpenAI: look for its answer in the conversation, and create
        again when there is no trace (a create that did land holds the conversation, so OpenAI
        refuses the second one and we keep looking)."""
        conversation_id = await self._tutor.conversation_of(run)
        found = (
            await self._ai.find_answer(conversation_id, marker(run.message_ts)) if conversation_id else None
        )
        if found is not None:
            log.info("run %s: found the answer of an unconfirmed create", run.id)
            await self._save(run, status="replying", keep_lease=True)
            await self._reply(run, found)
            return
        if run.attempts >= self._settings.tutor_max_attempts:
            failure = errors.AmbiguousCreate(f"no answer after {run.attempts} creates")
            failure.retryable = False
            raise failure
        log.info("run %s: no trace of the earlier create; creating again", run.id)
        await self._create(run)

    async def _poll(self, run: Run) -> None:
        assert run.response_id is not None
        reply = await self._ai.get_run(run.response_id)
        self._metrics.polled(reply.status)
        if not reply.finished:
            await self._keep_status_fresh(run, reply)
            progress: dict[str, Any] = {"attempts": 0, "failing_since": None} if run.attempts else {}
            await self._save(run, next_attempt_at=self._later(self._interval), **progress)
            return
        await self._save(run, status="replying", attempts=0, failing_since=None, keep_lease=True)
        await self._reply(run, reply)

    async def _reply(self, run: Run, reply: ModelReply | None) -> None:
        deadline = _DEADLINE.get()
        if deadline is not None:
            deadline.reschedule(None)  # an answer being delivered is never cut off
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

    # Failures

    async def _on_error(self, run: Run, exc: errors.TutorError) -> None:
        attempts = run.attempts + 1
        if isinstance(exc, errors.ContainerExpired):
            await self._tutor.forget_container(run.thread_id)
        elif isinstance(exc, errors.ContextLost) and run.status == "queued":
            await self._tutor.forget_conversation(run.thread_id)
        if run.status == "replying" and isinstance(exc, errors.SlackDeliveryFailed):
            await self._on_delivery_error(run, exc, attempts)
            return
        if exc.retryable and (isinstance(exc, errors.AmbiguousCreate) or attempts < self._max_attempts):
            # An ambiguous create is looked for soon; `_reconcile` bounds how often it is re-sent.
            first = RECONCILE_FIRST if isinstance(exc, errors.AmbiguousCreate) else 1.0
            delay = exc.retry_after if exc.retry_after is not None else self._backoff(attempts, first)
            log.info("run %s: %s; retry %s in %.1fs", run.id, exc.code, attempts, delay)
            status = "unknown" if isinstance(exc, errors.AmbiguousCreate) else run.status
            await self._retry_later(run, delay, status=status, attempts=attempts)
            return
        log.warning("run %s: failed with %s (%s)", run.id, exc.code, exc.detail)
        await self._save(
            run,
            status="replying",
            attempts=0,
            failing_since=None,
            error_code=exc.code,
            error_message=exc.detail,
            next_attempt_at=utcnow(),
        )
        self.wake()

    async def _on_delivery_error(self, run: Run, exc: errors.SlackDeliveryFailed, attempts: int) -> None:
        """Slack outages are outlasted (up to TUTOR_DELIVERY_DEADLINE); refusals end the run."""
        since = run.failing_since or utcnow()
        outage = (utcnow() - since).total_seconds()
        if exc.retryable and outage < self._settings.tutor_delivery_deadline:
            delay = exc.retry_after if exc.retry_after is not None else self._backoff(attempts, 1.0)
            log.info("run %s: delivery failed (%s); retry %s in %.1fs", run.id, exc.detail, attempts, delay)
            await self._save(run, attempts=attempts, failing_since=since, next_attempt_at=self._later(delay))
            return
        # Slack itself refuses the thread, or has been down past the deadline: nobody to tell.
        log.error("run %s: giving up on delivery after %.0fs: %s", run.id, outage, exc.detail)
        await self._save(run, status="failed", attempts=attempts, error_code=exc.code, finished_at=utcnow())

    async def _retry_later(self, run: Run, delay: float, *, status: str, **values: Any) -> None:
        """Try the run's step again after `delay`, never past its deadline; say so when it is slow."""
        if run.kind == "answer" and status in ANSWERING:
            delay = max(0.0, min(delay, self._time_left(run)))
            await self._tell_if_slow(run)
        await self._save(
            run,
            status=status,
            failing_since=run.failing_since or utcnow(),
            next_attempt_at=self._later(delay),
            **values,
        )

    async def _tell_if_slow(self, run: Run) -> None:
        if run.kind != "answer" or utcnow() - run.created_at < timedelta(
            seconds=self._settings.tutor_slow_notice
        ):
            return
        try:
            await self._replier.notify(run, "slow", SLOW_NOTICE)
        except errors.TutorError as exc:
            log.info("run %s: could not say it is slow (%s)", run.id, exc.code)

    def _backoff(self, attempts: int, first: float) -> float:
        return min(self._settings.tutor_retry_backoff_cap, first * 2.0 ** (attempts - 1))

    @property
    def _max_attempts(self) -> int:
        return self._settings.tutor_max_attempts

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


def _describe(exc: BaseException) -> str:
    """One line for a log: the exception's type and the first line of its cause (no SQL, no values)."""
    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
    first = str(cause).strip().splitlines()[0][:160] if str(cause).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class LeaseLost(Exception):
    """Another worker took the run over (our lease expired); stop touching it."""


async def _woken(event: asyncio.Event, *, within: float) -> None:
    """Wait until `event` is set or `within` seconds pass, then clear it.

    Not `asyncio.wait_for`: on Python 3.11 it loses a cancellation that arrives as the event is
    set, and a loop that lost its cancellation never stops.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await event.wait()
    event.clear()
