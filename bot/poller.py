"""The run-poller: claims due runs under a lease, drives each one step further, and hands
finished responses to the replier.

A run moves queued → creating → streaming → replying → done|failed (`unknown` after a create whose
outcome we could not see; `polling` when its event stream keeps breaking). Every step starts from
what the row says, so any worker can pick up a run whose worker died: a streaming run is resumed
after the last event its live answer relayed (`bot.live`), into the same Slack message.

One run, one pass: `_create` prepares the run (`bot.prepare`), creates the response with a stream,
and `_follow` relays its events (`bot.live`) until the response is over; then `_reply` hands the
answer to the replier (`bot.reply`). Every change of the row is a named, lease-checked transition
in `db.repo`. A library run (`bot.library`) indexes its files and reports in one step.

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
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from bot import errors
from bot.ai import AnswerEvent, ChartRef, ModelReply, OpenAIGateway
from bot.config import Settings
from bot.live import LiveAnswer, LiveMode, LiveState
from bot.logs import bind, log_context
from bot.metrics import Metrics
from bot.notifier import WakeUp
from bot.prepare import RunPreparer, marker, place_of
from bot.reply import SLOW_NOTICE, Replier
from bot.slack_api import Recipient, SlackGateway
from bot.workspaces import Workspaces
from db import leases, repo
from db.leases import LeaseLost
from db.models import Run, RunKind, RunStatus, ThreadFile, utcnow
from db.notify import WorkListener
from db.session import unavailable

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
ANSWERING = frozenset(
    {RunStatus.QUEUED, RunStatus.CREATING, RunStatus.UNKNOWN, RunStatus.STREAMING, RunStatus.POLLING}
)
#: A broken event stream is picked up again this many times before the run is polled instead.
STREAM_RETRIES = 3
#: The run deadline of the step this task is in, lifted once the answer is being delivered.
_DEADLINE: ContextVar[asyncio.Timeout | None] = ContextVar("run_deadline", default=None)


class Poller:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        crews: Crews,
        ai: OpenAIGateway,
        settings: Settings,
        wake: WakeUp | None = None,
        owner: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._engine = engine
        self._crews = crews
        #: The workspace crew of each run this worker drives (`_crew`), bound when its drive starts.
        self._bound: dict[int, Crew] = {}
        self._ai = ai
        self._settings = settings
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wakeup = asyncio.Event()
        self._cleanup_wakeup = asyncio.Event()
        self._lease = timedelta(seconds=settings.tutor_lease_seconds)
        self._active: dict[int, asyncio.Task[None]] = {}
        #: Shutting down: no run is started any more (`_finish` leaves the next question to others).
        self._stopping = False
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
        if wake is not None:
            wake.listen(self.wake)

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
            self._start_drive(run)
        return len(runs)

    def _start_drive(self, run: Run) -> None:
        task = asyncio.create_task(self._drive(run), name=f"run-{run.id}")
        self._active[run.id] = task
        task.add_done_callback(functools.partial(self._finished, run.id))

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
        """Delete what resets, retention and forget me left at OpenAI; retried with backoff until
        OpenAI says it is gone (a 404 counts as gone)."""
        now = utcnow()
        async with self._sessions.begin() as session:
            due = await repo.claim_cleanups(session, now=now, retry_at=now + CLEANUP_RETRY, limit=CLAIM_BATCH)
        for cleanup in due:
            delete = {
                "conversation": self._ai.delete_conversation,
                "turn": self._delete_turn,
                "response": self._ai.delete_response,
                "container": self._ai.delete_container,
                "file": self._ai.delete_file,
                "vector_store": self._ai.delete_vector_store,
                "vector_store_file": self._ai.delete_vector_store_file,
            }[cleanup.kind]
            try:
                await delete(cleanup.object_id)
            except errors.TutorError as exc:
                delay = min(3600.0, 30.0 * 2 ** min(cleanup.attempts, 7))
                async with self._sessions.begin() as session:
                    await repo.retry_cleanup(
                        session, cleanup_id=cleanup.id, error=exc.code, next_at=self._later(delay)
                    )
                continue
            async with self._sessions.begin() as session:
                await repo.finish_cleanup(session, cleanup_id=cleanup.id)
        return len(due)

    async def _delete_turn(self, ref: str) -> None:
        """One question's turn in a conversation (`ref` is "<conversation id>/<message ts>", as
        `repo.forget_turns` queues it), found by the marker its input started with."""
        conversation_id, _, message_ts = ref.partition("/")
        await self._ai.delete_turn(conversation_id, marker(message_ts))

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
                    lost = await leases.lost_leases(session, run_ids=list(self._active), owner=self.owner)
                self._to_release.clear()
                self._stop_lost(lost)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("run-poller: heart-beat failed (%s)", _describe(exc))

    def _stop_lost(self, run_ids: set[int]) -> None:
        """Stop driving runs no longer ours (another worker's now, or ended by an uninstall): a
        stream with nothing to relay would otherwise go on until its response is over."""
        for run_id in run_ids:
            task = self._active.get(run_id)
            if task is not None and not task.done():
                log.info("run %s: no longer held by this worker; stopping it", run_id)
                task.cancel()

    async def _hand_back(self) -> None:
        """Shutdown: finish what finishes within the grace period, release the rest to the next worker."""
        self._stopping = True  # finishing runs hand their thread's next question back, not on
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
                self._bound[run.id] = await self._crews.of(run.team_id)
                if self._out_of_time(run):
                    await self._time_out(run)
                else:
                    await self._step_in_time(run)
            except errors.NotInstalled as exc:
                log.warning("run %s: ended without a reply: %s", run.id, exc.detail)
                await self._finish_silently(run, code=exc.code)
            except errors.TutorError as exc:
                await self._on_error(run, exc)
            except (LeaseLost, asyncio.CancelledError):
                raise
            except (SQLAlchemyError, OSError) as exc:
                if unavailable(exc):
                    raise  # not the run's fault: released below and retried as it is, no attempt spent
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
        finally:
            self._bound.pop(run.id, None)

    def _crew(self, run: Run) -> Crew:
        """The Slack side of `run`'s own workspace: never another workspace's token."""
        return self._bound[run.id]

    async def _finish_silently(self, run: Run, *, code: str) -> None:
        await self._change(run, lambda s: repo.finish_run(s, run, owner=self.owner, failed=True, code=code))

    async def _step(self, run: Run) -> None:
        if run.kind == RunKind.OFFER:
            await self._crew(run).replier.offer(run)
            await self._finish(run, failed=False)
        elif run.kind == RunKind.RESET:
            await self._crew(run).preparer.reset_thread(run)
            await self._crew(run).replier.reset_notice(run)
            await self._finish(run, failed=False)
        elif run.kind == RunKind.WORK:
            await self._crew(run).replier.show_work(run)
            await self._finish(run, failed=False)
        elif run.kind == RunKind.LIBRARY and run.status == RunStatus.QUEUED:
            outcome = await self._crew(run).preparer.library.index(
                run, lambda status: self._crew(run).preparer.show_working(run, status)
            )
            await self._crew(run).replier.notify(run, "library", outcome.message())
            await self._crew(run).replier.deliver(run, None)  # clears a DM's status
            await self._finish(run, failed=False)
        elif run.status == RunStatus.QUEUED:
            await self._create(run)
        elif run.status in (RunStatus.CREATING, RunStatus.UNKNOWN):
            await self._reconcile(run)
        elif run.status == RunStatus.STREAMING:
            await self._resume(run)
        elif run.status == RunStatus.POLLING:
            await self._poll(run)
        elif run.status == RunStatus.REPLYING:
            await self._reply(run, await self._load_reply(run))  # usage went with the replying mark

    async def _step_in_time(self, run: Run) -> None:
        """A step of an unanswered question ends at the run's deadline, even inside a hung call."""
        if run.kind != RunKind.ANSWER or run.status not in ANSWERING:
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
        return run.kind == RunKind.ANSWER and run.status in ANSWERING and self._time_left(run) <= 0

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
        if run.status not in (RunStatus.POLLING, RunStatus.STREAMING) or run.response_id is None:
            raise errors.RunTimedOut(f"timed out while {run.status}")
        reply: ModelReply | None = None
        with contextlib.suppress(errors.TutorError):
            reply = await self._ai.cancel_run(run.response_id)
        if reply is None or not reply.finished:
            reply = ModelReply(response_id=run.response_id, status="cancelled")
        await self._replying(run, reply)
        await self._reply(run, reply)

    async def _create(self, run: Run) -> None:
        again = run.status in (RunStatus.UNKNOWN, RunStatus.CREATING)  # an earlier create may have landed
        shown_at = None
        if run.status_shown_at is None:  # noted with the intent below (a retry shows it again)
            await self._crew(run).preparer.show_working(run)
            shown_at = utcnow()
        prepared = await self._crew(run).preparer.prepare(run)
        files = prepared.files
        await self._crew(run).replier.tell_rejected_files(run, files)  # before the answer streams
        if prepared.request is None:  # nothing to ask the model: only files it can't use
            await self._replying(run, None)
            await self._reply(run, None, files)
            return
        # Record the intent before the non-idempotent call: a crash from here on means "unknown".
        started = run.create_started_at or utcnow()
        await self._change(
            run,
            lambda s: repo.mark_creating(
                s, run, owner=self.owner, started_at=started, status_shown_at=shown_at
            ),
        )
        try:
            reply = await self._follow(run, self._ai.stream_run(prepared.request), resumed=False)
        except errors.ConversationBusy:
            if again:
                # OpenAI still runs the earlier create on this conversation: wait for its answer.
                log.info("run %s: the earlier create is still running; waiting for its answer", run.id)
                await self._retry_later(run, RECONCILE_EVERY, status=RunStatus.UNKNOWN)
                return
            await self._change(run, lambda s: repo.requeue(s, run, owner=self.owner))
            raise
        except errors.TutorError as exc:
            # Refused before the response existed: nothing runs at OpenAI, it can be created again.
            if run.status == RunStatus.CREATING and not isinstance(exc, errors.AmbiguousCreate):
                await self._change(run, lambda s: repo.requeue(s, run, owner=self.owner))
            raise
        await self._reply(run, reply, files)

    async def _resume(self, run: Run) -> None:
        """A streaming run whose worker stopped: its events after the last one relayed."""
        assert run.response_id is not None
        log.info("run %s: resuming the answer after event %s", run.id, run.stream_seq)
        reply = await self._follow(
            run, self._ai.resume_run(run.response_id, after=run.stream_seq), resumed=True
        )
        await self._reply(run, reply)

    async def _follow(
        self, run: Run, events: AsyncGenerator[AnswerEvent, None], *, resumed: bool
    ) -> ModelReply:
        """Relay a response's events into Slack until it is over; return its final state."""
        live = self._live_answer(run, resumed=resumed)
        live.start()
        status = asyncio.create_task(self._keep_status_while_silent(run, live), name=f"status-{run.id}")
        charts = _CitedCharts(self._crew(run).replier, run)
        reply: ModelReply | None = None
        stopped = False
        try:
            async with contextlib.aclosing(events) as stream:
                async for event in stream:
                    if event.response_id is not None and event.response_id != run.response_id:
                        await self._started(run, event.response_id)
                    if event.chart is not None:
                        charts.cited(event.chart)
                    live.add(event)
                    # Uploaded only below words already in the thread (the first words may still
                    # be on their way when the chart is cited), else with the answer.
                    charts.upload_if(shown=live.text_shown)
                    if live.failure is not None:
                        raise live.failure
                    if event.reply is not None:
                        reply = event.reply
                        break
        except asyncio.CancelledError:
            # The run is being stopped (shutdown, or its deadline): calls in flight are abandoned,
            # not waited for; delivery rows and the stream state say what happened.
            stopped = True
            charts.cancel()
            raise
        finally:
            status.cancel()
            await live.close(abort=stopped)
            await charts.uploaded()
        if live.failure is not None:
            raise live.failure
        if run.response_id is None:
            raise errors.AmbiguousCreate("the stream ended before naming the response")
        if reply is None:
            # The stream ended without the last event: the response itself says whether it is over.
            reply = await self._ai.get_run(run.response_id)
            self._metrics.polled(reply.status)
            if not reply.finished:
                raise errors.StreamDropped("the stream ended early", retry_after=0.2)
        await self._replying(run, reply)
        return reply

    async def _keep_status_while_silent(self, run: Run, live: LiveAnswer) -> None:
        """Slack clears a thread status after two minutes: re-send it until the first words show."""
        if not run.reply_thread_ts:
            return
        while True:
            await asyncio.sleep(STATUS_REFRESH.total_seconds())
            if live.text_shown:
                return
            await self._crew(run).preparer.show_working(
                run, "is running code…" if live.ran_code else "is thinking…"
            )

    async def _started(self, run: Run, response_id: str) -> None:
        # Before any words: a stream opened from here on may reach Slack unrecorded (the crash
        # window of chat.startStream), and the run says so, at no extra commit.
        opening = LiveMode.OPENING if place_of(run).thread_ts and not run.stream_messages else None
        await self._change(
            run,
            lambda s: repo.mark_streaming(
                s, run, owner=self.owner, response_id=response_id, stream_mode=opening
            ),
        )
        bind(response_id=response_id)
        log.info("run %s: response %s started", run.id, response_id)

    def _live_answer(self, run: Run, *, resumed: bool) -> LiveAnswer:
        mode = LiveMode(run.stream_mode) if run.stream_mode else None
        if resumed and mode is LiveMode.POSTING:
            mode = LiveMode.QUIET  # the preview post may have landed: the replier looks for it
        # A stream may have been opened unrecorded (the worker died during chat.startStream): the
        # live answer looks for it before it opens one.
        unanswered_start = resumed and mode is LiveMode.OPENING
        if mode is LiveMode.OPENING:
            mode = None
        state = LiveState(run.stream_seq, list(run.stream_messages or []), mode, run.stream_chars or 0)

        async def save(state: LiveState) -> None:
            await self._change(
                run,
                lambda s: repo.save_stream(
                    s,
                    run,
                    owner=self.owner,
                    seq=state.seq,
                    messages=state.messages,
                    mode=state.mode,
                    chars=state.chars,
                ),
            )

        return LiveAnswer(
            slack=self._crew(run).slack,
            place=place_of(run),
            recipient=Recipient(user_id=run.user_id, team_id=run.team_id),
            question_ts=run.message_ts,
            delivery_key=f"{run.run_uuid}:text:0",
            state=state,
            save=save,
            resumed=resumed,
            fence=lambda: self._fence(run),
            unanswered_start=unanswered_start,
        )

    async def _reconcile(self, run: Run) -> None:
        """A create may have reached OpenAI: look for its answer in the conversation, and create
        again when there is no trace (a create that did land holds the conversation, so OpenAI
        refuses the second one and we keep looking)."""
        conversation_id = await self._crew(run).preparer.conversation_of(run)
        found = (
            await self._ai.find_answer(conversation_id, marker(run.message_ts)) if conversation_id else None
        )
        if found is not None:
            log.info("run %s: found the answer of an unconfirmed create", run.id)
            await self._replying(run, found)
            await self._reply(run, found)
            return
        if run.attempts >= self._settings.tutor_max_attempts:
            failure = errors.AmbiguousCreate(f"no answer after {run.attempts} creates")
            failure.retryable = False
            raise failure
        log.info("run %s: no trace of the earlier create; creating again", run.id)
        await self._create(run)

    async def _poll(self, run: Run) -> None:
        """The fallback: the response is retrieved at most once per poll interval."""
        assert run.response_id is not None
        reply = await self._ai.get_run(run.response_id)
        self._metrics.polled(reply.status)
        if not reply.finished:
            await self._keep_status_fresh(run, reply)
            next_at = self._later(self._interval)
            await self._change(run, lambda s: repo.poll_later(s, run, owner=self.owner, next_at=next_at))
            return
        await self._replying(run, reply)
        await self._reply(run, reply)

    async def _replying(self, run: Run, reply: ModelReply | None) -> None:
        """The response is over: the run is delivered next, and the answer's usage is recorded in
        the same commit (once per run: a resumed delivery adds nothing)."""
        usage = self._crew(run).preparer.usage

        async def transition(session: AsyncSession) -> bool:
            held = await repo.mark_replying(session, run, owner=self.owner)
            if held and reply is not None and run.kind == RunKind.ANSWER:
                await usage.record(session, run, reply)
            return held

        await self._change(run, transition)

    async def _reply(
        self, run: Run, reply: ModelReply | None, files: Sequence[ThreadFile] | None = None
    ) -> None:
        """Deliver the answer; `files`, the thread's files when this drive prepared the run."""
        deadline = _DEADLINE.get()
        if deadline is not None:
            deadline.reschedule(None)  # an answer being delivered is never cut off
        crew = self._crew(run)
        await crew.replier.deliver(run, reply, files)
        failed = bool(run.error_code) or (reply is not None and reply.failure() is not None)
        await self._finish(run, failed=failed)
        log.info("run %s: %s", run.id, "failed" if failed else "answered")

    async def _load_reply(self, run: Run) -> ModelReply | None:
        if run.error_code or (run.response_id is None and run.create_started_at is None):
            return None
        if run.response_id:
            return await self._ai.get_run(run.response_id)
        conversation_id = await self._crew(run).preparer.conversation_of(run)
        return (
            await self._ai.find_answer(conversation_id, marker(run.message_ts)) if conversation_id else None
        )

    async def _keep_status_fresh(self, run: Run, reply: ModelReply) -> None:
        if run.reply_thread_ts and (
            run.status_shown_at is None or utcnow() - run.status_shown_at > STATUS_REFRESH
        ):
            await self._crew(run).preparer.show_working(
                run, "is running code…" if reply.ran_code else "is thinking…"
            )
            await self._change(run, lambda s: repo.note_status_shown(s, run, owner=self.owner, at=utcnow()))

    # Failures

    async def _on_error(self, run: Run, exc: errors.TutorError) -> None:
        attempts = run.attempts + 1
        if isinstance(exc, errors.ContainerExpired):
            await self._crew(run).preparer.forget_container(run.thread_id)
        elif isinstance(exc, errors.ContextLost) and run.status == RunStatus.QUEUED:
            await self._crew(run).preparer.forget_conversation(run.thread_id)
        if run.status == RunStatus.REPLYING and isinstance(exc, errors.SlackDeliveryFailed):
            await self._on_delivery_error(run, exc, attempts)
            return
        if run.status == RunStatus.STREAMING and run.response_id is not None:
            await self._on_stream_error(run, exc, attempts, run.response_id)
            return
        if exc.retryable and (isinstance(exc, errors.AmbiguousCreate) or attempts < self._max_attempts):
            # An ambiguous create is looked for soon; `_reconcile` bounds how often it is re-sent.
            first = RECONCILE_FIRST if isinstance(exc, errors.AmbiguousCreate) else 1.0
            delay = exc.retry_after if exc.retry_after is not None else self._backoff(attempts, first)
            log.info("run %s: %s; retry %s in %.1fs", run.id, exc.code, attempts, delay)
            status = RunStatus.UNKNOWN if isinstance(exc, errors.AmbiguousCreate) else run.status
            await self._retry_later(run, delay, status=status, attempts=attempts)
            return
        log.warning("run %s: failed with %s (%s)", run.id, exc.code, exc.detail)
        await self._change(
            run, lambda s: repo.fail_run(s, run, owner=self.owner, code=exc.code, message=exc.detail)
        )
        self.wake()

    async def _on_stream_error(
        self, run: Run, exc: errors.TutorError, attempts: int, response_id: str
    ) -> None:
        """The response exists: resume its stream soon, and after repeated breaks poll it instead
        (polling finds out how the response ended, whatever broke the stream)."""
        if exc.retryable and attempts < STREAM_RETRIES:
            delay = exc.retry_after if exc.retry_after is not None else self._backoff(attempts, 0.5)
            log.info("run %s: %s; resuming the stream in %.1fs", run.id, exc.code, delay)
            await self._retry_later(run, delay, status=RunStatus.STREAMING, attempts=attempts)
            return
        log.warning("run %s: the stream broke %d times (%s); polling instead", run.id, attempts, exc.code)
        next_at = self._later(self._interval)
        await self._change(
            run,
            lambda s: repo.mark_polling(s, run, owner=self.owner, response_id=response_id, next_at=next_at),
        )

    async def _on_delivery_error(self, run: Run, exc: errors.SlackDeliveryFailed, attempts: int) -> None:
        """Slack outages are outlasted (up to TUTOR_DELIVERY_DEADLINE); refusals end the run."""
        since = run.failing_since or utcnow()
        outage = (utcnow() - since).total_seconds()
        if exc.retryable and outage < self._settings.tutor_delivery_deadline:
            delay = exc.retry_after if exc.retry_after is not None else self._backoff(attempts, 1.0)
            log.info("run %s: delivery failed (%s); retry %s in %.1fs", run.id, exc.detail, attempts, delay)
            next_at = self._later(delay)
            await self._change(
                run,
                lambda s: repo.retry_later(
                    s,
                    run,
                    owner=self.owner,
                    status=run.status,
                    next_at=next_at,
                    attempts=attempts,
                    failing_since=since,
                ),
            )
            return
        # Slack itself refuses the thread, or has been down past the deadline: nobody to tell.
        log.error("run %s: giving up on delivery after %.0fs: %s", run.id, outage, exc.detail)
        run.attempts = attempts
        await self._change(
            run, lambda s: repo.finish_run(s, run, owner=self.owner, failed=True, code=exc.code)
        )

    async def _retry_later(self, run: Run, delay: float, *, status: str, attempts: int | None = None) -> None:
        """Try the run's step again after `delay`, never past its deadline; say so when it is slow."""
        if run.kind == RunKind.ANSWER and status in ANSWERING:
            delay = max(0.0, min(delay, self._time_left(run)))
            if status != RunStatus.STREAMING:
                await self._tell_if_slow(run)
        next_at, since = self._later(delay), run.failing_since or utcnow()
        count = run.attempts if attempts is None else attempts
        await self._change(
            run,
            lambda s: repo.retry_later(
                s, run, owner=self.owner, status=status, next_at=next_at, attempts=count, failing_since=since
            ),
        )

    async def _tell_if_slow(self, run: Run) -> None:
        if run.kind != RunKind.ANSWER or utcnow() - run.created_at < timedelta(
            seconds=self._settings.tutor_slow_notice
        ):
            return
        crew = self._bound.get(run.id)
        if crew is None:
            return  # its workspace's gateway could not be had: there is nobody to tell
        try:
            await crew.replier.notify(run, "slow", SLOW_NOTICE)
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

    async def _finish(self, run: Run, *, failed: bool) -> None:
        """The run is over; the next question of its thread, when it is due and nobody holds it,
        is leased in the same commit and driven next by this worker (its slot passes on): no
        claim round, and no notification for every worker to race for it."""
        now = utcnow()
        chain = not self._stopping

        async def transition(session: AsyncSession) -> Run | None:
            after = (
                await leases.claim_next_in_thread(
                    session, run, owner=self.owner, now=now, lease_until=now + self._lease
                )
                if chain
                else None
            )
            if not await repo.finish_run(session, run, owner=self.owner, failed=failed):
                raise LeaseLost(run.id)  # the next question's lease is rolled back with it
            return after

        async with self._sessions.begin() as session:
            after = await transition(session)
        if after is not None:
            self._start_drive(after)

    async def _fence(self, run: Run) -> None:
        """LeaseLost unless this worker's claim on `run` still stands (owner and generation)."""
        async with self._sessions() as session:
            await leases.ensure_held(session, run)

    async def _change(self, run: Run, transition: Callable[[AsyncSession], Awaitable[bool]]) -> None:
        """Apply a lease-checked transition (`db.repo`); LeaseLost when another worker holds the run."""
        async with self._sessions.begin() as session:
            held = await transition(session)
        if not held:
            raise LeaseLost(run.id)


def _describe(exc: BaseException) -> str:
    """One line for a log: the exception's type and the first line of its cause (no SQL, no values)."""
    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
    first = str(cause).strip().splitlines()[0][:160] if str(cause).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@dataclass(frozen=True)
class Crew:
    """One workspace's Slack side: its gateway, and the preparer and replier speaking through it."""

    slack: SlackGateway
    preparer: RunPreparer
    replier: Replier


class Crews:
    """A Crew for each workspace, around the gateway `workspaces` gives its team (`bot.workspaces`):
    in single-workspace mode one crew serves every run; in distribution mode each workspace has
    its own, rebuilt when its token changes."""

    def __init__(self, workspaces: Workspaces, make: Callable[[SlackGateway], Crew]) -> None:
        self.workspaces = workspaces
        self._make = make
        self._crews: dict[str, Crew] = {}

    async def of(self, team_id: str) -> Crew:
        """errors.NotInstalled when the workspace has no installation (any more)."""
        gateway = await self.workspaces.gateway(team_id)
        crew = self._crews.get(team_id)
        if crew is None or crew.slack is not gateway:
            crew = next((c for c in self._crews.values() if c.slack is gateway), None) or self._make(gateway)
            self._crews[team_id] = crew
        return crew


class _CitedCharts:
    """Charts uploaded as soon as the answer cites them, each once (the replier's delivery rows),
    once the answer's words are in the thread (else they'd come before it); all are done before
    the answer is delivered, which uploads the others and any that failed here."""

    def __init__(self, replier: Replier, run: Run) -> None:
        self._replier = replier
        self._run = run
        self._seen: set[str] = set()
        #: Cited before the first words showed, with their numbers: uploaded once they show.
        self._waiting: list[tuple[ChartRef, int]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def cited(self, chart: ChartRef) -> None:
        if chart.file_id in self._seen:
            return
        self._seen.add(chart.file_id)  # numbered in citation order, as the replier numbers them
        self._waiting.append((chart, len(self._seen)))

    def upload_if(self, *, shown: bool) -> None:
        """Start the uploads of the charts cited so far, if the answer's words are in the thread."""
        if not shown:
            return
        for chart, number in self._waiting:
            uploading = self._replier.upload_cited(self._run, chart, number)
            self._tasks.append(asyncio.create_task(uploading, name=f"chart-{self._run.id}"))
        self._waiting.clear()

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def uploaded(self) -> None:
        for outcome in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                log.info(
                    "run %s: a cited chart is uploaded with the answer instead (%s)", self._run.id, outcome
                )


async def _woken(event: asyncio.Event, *, within: float) -> None:
    """Wait until `event` is set or `within` seconds pass, then clear it.

    Not `asyncio.wait_for`: on Python 3.11 it loses a cancellation that arrives as the event is
    set, and a loop that lost its cancellation never stops.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await event.wait()
    event.clear()
