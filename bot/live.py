"""A live answer: the model's text and work relayed into Slack as they arrive.

Text goes into a Slack stream (`chat.startStream` / `appendStream`) at most once a second per
message, except the first words, which go at once; each `code_interpreter_call` is a task in the
stream ("Running Python…", then done with its code and output). Past `MESSAGE_LIMIT` characters
the answer goes on in a follow-up message. Where Slack won't stream (the top level of a DM,
`channel_type_not_supported`, any 4xx on `chat.startStream`), the answer so far is posted and
edited as it grows; a stream Slack closed (after ~5 minutes) goes on as edits of its message.

Progress (the last relayed sequence number, the messages, the mode) is saved after Slack calls,
never per event, so after a crash any worker resumes the response's events after that number and
continues the same message. The final text is not this module's: the replier rewrites these
messages with the posted form of the answer and its buttons (`Replier.deliver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot import errors
from bot.ai import AnswerEvent, WorkStep
from bot.formatting import live_markdown, stable_end
from bot.slack_api import Place, Recipient, SlackGateway

log = logging.getLogger(__name__)

#: Seconds between two appends to one stream (Slack: "about one a second"), and between edits of
#: a posted preview (chat.update is Tier 3, ~50 a minute per workspace).
APPEND_EVERY = 1.0
EDIT_EVERY = 2.0
#: Characters one streamed message takes before the answer goes on in a follow-up (Slack: 12,000,
#: kept clear of it because glue and a last flush can add a little).
MESSAGE_LIMIT = 11_000
#: Failed Slack calls in a row after which nothing more is shown live (the final answer still is).
GIVE_UP_AFTER = 5
#: A run being stopped (shutdown, its deadline) waits this long for a Slack call in flight and the
#: save after it: a message Slack made is recorded, so whoever goes on continues it.
SETTLE_WITHIN = 10.0
TASK_TEXT_LIMIT = 2_000
RUNNING = "Running Python…"
RAN = "Ran Python"


class LiveMode(StrEnum):
    #: The last message is a Slack stream.
    STREAM = "stream"
    #: A preview post is being made (recorded before the call: a crash leaves a tagged message).
    POSTING = "posting"
    #: A stream may be being opened (recorded with the response id, before the first words): a
    #: crash during chat.startStream leaves an untagged message, which the next worker looks for.
    OPENING = "opening"
    #: The last message is a posted preview (or a closed stream), edited as the answer grows.
    EDIT = "edit"
    #: Nothing more is shown until the final answer (Slack kept failing, or the text shown before
    #: a crash is not known here).
    QUIET = "quiet"


@dataclass
class LiveState:
    """What `runs.stream_*` holds for a live answer."""

    seq: int | None = None
    messages: list[str] = field(default_factory=list)
    mode: LiveMode | None = None
    chars: int = 0


class LiveAnswer:
    """Relays one response's events into Slack; `add` events, `run` the relay, then `close`."""

    def __init__(
        self,
        *,
        slack: SlackGateway,
        place: Place,
        recipient: Recipient,
        question_ts: str,
        delivery_key: str,
        state: LiveState,
        save: Callable[[LiveState], Awaitable[None]],
        resumed: bool,
        fence: Callable[[], Awaitable[None]] | None = None,
        unanswered_start: bool = False,
    ) -> None:
        """`unanswered_start`: an earlier attempt (a worker that died) may have opened a stream
        that was never recorded; it is looked for before another is opened."""
        self._slack = slack
        self._place = place
        self._recipient = recipient
        self._question_ts = question_ts
        self._delivery_key = delivery_key
        self.state = state
        self._save_state = save
        #: Raises when this worker no longer holds the run: checked before every Slack call.
        self._fence = fence
        # After a crash the text shown so far is not known here: it can be appended to, not edited.
        self._prefix_known = not resumed
        self._raw = ""
        self._sent = 0
        self._message_start = 0
        #: (end of an event's text in `_raw`, its sequence number), for text not shown yet.
        self._marks: list[tuple[int, int]] = []
        self._tasks: list[tuple[int, dict[str, Any]]] = []
        self._item = ""
        self._last_seq = state.seq
        self._wake = asyncio.Event()
        self._closing = False
        self._next_at = 0.0
        self._failures = 0
        self._text_shown = resumed and bool(state.messages)
        self._rate_limited = False
        self._no_stream = False
        #: A chat.startStream got no answer: Slack may have made its message, which has no tag.
        self._may_have_opened = unanswered_start and not state.messages
        self._ran_code = False
        #: Set when saving progress failed (the lease is lost, the database is down): the caller
        #: re-raises it.
        self.failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        #: Clear while a flush (a Slack call and the save of what it made) is under way.
        self._settled = asyncio.Event()
        self._settled.set()

    @property
    def text_shown(self) -> bool:
        return self._text_shown

    @property
    def ran_code(self) -> bool:
        return self._ran_code

    def start(self) -> None:
        self._task = asyncio.create_task(self._relay_forever(), name="live-answer")

    def add(self, event: AnswerEvent) -> None:
        self._last_seq = event.sequence
        if event.text:
            if self._item and event.item_id != self._item and self._raw.strip():
                self._raw += "\n\n"
            self._item = event.item_id
            self._raw += event.text
            self._marks.append((len(self._raw), event.sequence))
            self._wake.set()  # the relay works out when it may call Slack
        elif event.step is not None:
            self._ran_code = True
            self._tasks.append((event.sequence, _task_chunk(event.step)))
            self._wake.set()
        elif self._raw[self._sent :].strip():
            self._wake.set()

    async def close(self, *, abort: bool = False) -> LiveState:
        """Stop relaying; the messages stay for the final answer. A call in flight finishes,
        and so does the relay's last flush unless `abort` (the run is being stopped).

        However the run stops (`abort`, or this wait itself cancelled: shutdown, the run's
        deadline), a flush under way is let finish, up to SETTLE_WITHIN: Slack may already have
        made the message that call opens, and only its recorded ts lets the next worker go on in
        it instead of opening a second one."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None:
            return self.state
        try:
            if not abort:
                await asyncio.wait([task])  # unlike gather, a cancel of this wait spares the relay
        finally:
            if not task.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SETTLE_WITHIN):
                        await self._settled.wait()
                task.cancel()
                await asyncio.wait([task])
        if not abort and self._may_have_opened and not self.state.messages:
            # The answer is done before the relay looked: the final answer goes into that message.
            try:
                if await self._take_over_unanswered_start():
                    await self._save()
            except errors.SlackDeliveryFailed as exc:
                log.warning("live answer: could not look for an unrecorded stream (%s)", exc.detail)
        return self.state

    async def _take_over_unanswered_start(self) -> bool:
        """A stream start that got no answer may have made a message (untagged: chat.startStream
        takes no metadata). Found, it is this answer's; what it shows is not known, so nothing
        more is shown live and the final answer rewrites it."""
        found = await self._slack.find_untagged_reply(self._place, oldest=self._question_ts)
        self._may_have_opened = False
        if found is None:
            return False
        log.info("live answer: a stream start that got no answer did open %s", found)
        self.state = LiveState(self.state.seq, [found], LiveMode.QUIET, 0)
        return True

    # The relay

    async def _relay_forever(self) -> None:
        try:
            while await self._due():
                self._settled.clear()
                try:
                    await self._flush()
                finally:
                    self._settled.set()
        except Exception as exc:  # saving progress failed: the consumer stops the run
            self.failure = exc

    async def _due(self) -> bool:
        """Wait until there is something to show and Slack may be called; False once closing."""
        while not self._closing:
            wait = self._wait()
            if wait is not None and wait <= 0:
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
        return False

    def _wait(self) -> float | None:
        """Seconds until the next Slack call; None when there is nothing to show."""
        text = self._pending_text()
        if not text and not self._tasks:
            return None
        if text and not self._text_shown and not self._rate_limited and not self._failures:
            return 0.0  # the first words go at once
        return self._next_at - time.monotonic()

    def _pending_text(self) -> bool:
        return bool(self._raw[self._sent : stable_end(self._raw)].strip())

    async def _flush(self) -> None:
        end = stable_end(self._raw)
        if end < self._sent:
            end = self._sent
        tasks = [chunk for _, chunk in self._tasks]
        taken = len(self._tasks)
        mode = self.state.mode
        if self._fence is not None:
            await self._fence()  # a worker frozen past its lease must not touch the message again
        interval = APPEND_EVERY
        try:
            if mode is None:
                await self._open(end, tasks)
            elif mode is LiveMode.STREAM:
                await self._append(end, tasks)
            elif mode is LiveMode.EDIT:
                await self._edit(end)
                interval = EDIT_EVERY
        except errors.SlackRateLimited as exc:
            self._rate_limited = True
            self._next_at = time.monotonic() + (exc.retry_after or 1.0)
            log.info("live answer: Slack asks to wait %.1fs (%s)", exc.retry_after or 1.0, exc.detail)
            return
        except errors.StreamRefused as exc:
            log.info("live answer: Slack won't stream here (%s); posting instead", exc.detail)
            self._no_stream = True
            self._next_at = 0.0
            return
        except errors.StreamClosed as exc:
            self.state.mode = LiveMode.EDIT if self._prefix_known else LiveMode.QUIET
            log.info("live answer: the stream was closed (%s); going on as %s", exc.detail, self.state.mode)
            await self._save()
            return
        except errors.SlackDeliveryFailed as exc:
            if mode is None and exc.outcome_unknown:
                self._may_have_opened = True
            self._failures += 1
            self._next_at = time.monotonic() + interval * self._failures
            if self._failures >= GIVE_UP_AFTER:
                log.warning("live answer: Slack keeps failing (%s); the final answer will show", exc.detail)
                self.state.mode = LiveMode.QUIET
            return
        self._rate_limited = False
        self._failures = 0
        if self.state.mode is not None:
            self._sent = max(self._sent, end)
            del self._tasks[:taken]
            if self.state.mode is LiveMode.QUIET:
                self._tasks.clear()
        self._next_at = time.monotonic() + interval
        await self._save()

    async def _open(self, end: int, tasks: list[dict[str, Any]]) -> None:
        text = live_markdown(self._raw[self._sent : end])
        if self._place.thread_ts is None or self._no_stream:
            if not text.strip():
                self._tasks.clear()  # a preview post shows no tasks: nothing to show yet
                return
            await self._post(end)
            return
        if self._may_have_opened and await self._take_over_unanswered_start():
            await self._first_text()
            return
        ts = await self._slack.start_stream(
            self._place, recipient=self._recipient, markdown_text=text, chunks=tasks
        )
        self.state = LiveState(self.state.seq, [ts], LiveMode.STREAM, len(text))
        self._message_start = self._sent
        if text.strip():
            await self._first_text()

    async def _append(self, end: int, tasks: list[dict[str, Any]]) -> None:
        text = live_markdown(self._raw[self._sent : end])
        place, ts = self._place, self.state.messages[-1]
        if self.state.chars + len(text) > MESSAGE_LIMIT:
            # The rest of the answer goes on in a follow-up message of its own.
            await self._slack.stop_stream(place, ts)
            ts = await self._slack.start_stream(
                place, recipient=self._recipient, markdown_text=text, chunks=tasks
            )
            self.state.messages.append(ts)
            self.state.chars = len(text)
            self._message_start = self._sent
            return
        await self._slack.append_stream(place, ts, markdown_text=text, chunks=tasks)
        self.state.chars += len(text)
        if text.strip() and not self._text_shown:
            await self._first_text()

    async def _edit(self, end: int) -> None:
        text = live_markdown(self._raw[self._message_start : end])
        if not self._prefix_known or len(text) > MESSAGE_LIMIT:
            self.state.mode = LiveMode.QUIET  # the final answer splits what one message can't hold
            return
        if text.strip() and end > self._sent:
            await self._slack.edit_preview(self._place, self.state.messages[-1], text)
        self.state.chars = len(text)

    async def _post(self, end: int) -> None:
        text = live_markdown(self._raw[self._sent : end])
        ts = None
        if self.state.mode is LiveMode.POSTING:  # an earlier attempt may have landed
            ts = await self._slack.find_post(
                self._place, delivery_key=self._delivery_key, oldest=self._question_ts
            )
        self.state.mode = LiveMode.POSTING
        await self._save()  # a crash during the post leaves a tagged message the replier finds
        if ts is None:
            ts = await self._slack.post_preview(self._place, text, delivery_key=self._delivery_key)
        else:
            await self._slack.edit_preview(self._place, ts, text)
        self.state = LiveState(self.state.seq, [ts], LiveMode.EDIT, len(text))
        self._message_start = self._sent
        await self._first_text()

    async def _first_text(self) -> None:
        self._text_shown = True
        if self._place.thread_ts:
            await self._slack.show_status(self._place, "", message_ts=self._question_ts)

    async def _save(self) -> None:
        self._marks = [(end, seq) for end, seq in self._marks if end > self._sent]
        unsent = [seq for _, seq in self._marks[:1]] + [seq for seq, _ in self._tasks[:1]]
        self.state.seq = min(unsent) - 1 if unsent else self._last_seq
        await self._save_state(self.state)


def _task_chunk(step: WorkStep) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "type": "task_update",
        "id": step.id,
        "title": RAN if step.done else RUNNING,
        "status": "complete" if step.done else "in_progress",
    }
    if step.done and step.code:
        chunk["details"] = f"```\n{step.code[:TASK_TEXT_LIMIT]}\n```"
    if step.done and step.output:
        chunk["output"] = step.output[:TASK_TEXT_LIMIT]
    return chunk
