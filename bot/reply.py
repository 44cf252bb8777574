"""Turns a finished run into Slack posts and chart uploads, exactly once.

Every post and upload has a delivery row keyed by (run, key). The row is written before Slack is
called and marked done after; a row left pending by a crash is checked against Slack (message
metadata, file shares) before anything is sent again.

A live answer (`bot.live`) already has messages in the thread: the answer's first messages go
into them (the stream is stopped, and the message rewritten with `chat.update`, which is
repeatable), so there is never a half-written message next to a full one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import errors
from bot.ai import ChartRef, ModelReply, OpenAIGateway
from bot.documents import may_have_sources, sources_line, sources_of, strip_citation_markers
from bot.files import type_label
from bot.formatting import (
    SLACK_CHUNK_LIMIT,
    DisplayMath,
    escape_mrkdwn,
    format_answer,
    format_reply,
    split_message,
)
from bot.live import LiveMode
from bot.math_images import render_all
from bot.prepare import place_of
from bot.slack_api import Place, SlackGateway
from bot.ui import WORK_GONE, answer_controls, offer_blocks, section, work_blocks
from db import leases, repo
from db.models import Delivery, Run, ThreadFile, utcnow

log = logging.getLogger(__name__)

RESET_NOTICE = (
    "Starting over: I've forgotten this thread's conversation and files. Ask me anything, "
    "or share a file to analyse."
)
CUT_OFF_NOTE = "_(My answer was cut off. Ask me to continue.)_"
SLOW_NOTICE = "OpenAI is slow to answer, still trying…"
#: Blocks one message may hold (Slack: 50), keeping two for the answer's controls (the feedback
#: buttons, and Start over / Show work).
MAX_BLOCKS = 48
IMAGE_ALT_LIMIT = 2000
#: Equation images uploaded at once (files.* are Tier 4: 100+/min).
UPLOAD_CONCURRENCY = 8
#: Seconds a post or share whose answer was never seen (the worker died, the call timed out) may
#: still land at Slack; a retry looks for it only once they have passed, or it would post twice.
IN_FLIGHT = 5.0
#: How long an answer waits for Slack to process its equation images before posting anyway.
PROCESSING_WAIT = 10.0
#: Pauses before re-posting a message whose images Slack didn't find yet; then they become text.
IMAGE_POST_RETRIES = (1.0, 2.0)


@dataclass(frozen=True)
class ChartUpload:
    """A file from the run's sandbox, named for Slack."""

    file_id: str
    container_id: str
    filename: str
    title: str


class Replier:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        ai: OpenAIGateway,
        slack: SlackGateway,
        max_file_mb: int = 50,
        math_images: bool = True,
    ) -> None:
        self._sessions = sessions
        self._ai = ai
        self._slack = slack
        self._max_file_mb = max_file_mb
        self._math_images = math_images
        #: Per run being delivered: the live messages its parts went into.
        self._used_live: dict[int, set[str]] = {}

    async def offer(self, run: Run) -> None:
        """Ask, in the thread of a shared spreadsheet, whether to analyse it (with a button)."""
        files = await self._files_of(run)
        names = ", ".join(f"`{_shown(f.name)}`" for f in files) or "this file"
        text = f"Want me to analyse {names}?"
        blocks = offer_blocks(text, run.channel_id, run.reply_thread_ts)
        await self._post_once(run, place_of(run), "offer", text, blocks=blocks)

    async def show_work(self, run: Run) -> None:
        """Show work: the code the answer's response ran and what it printed, to the presser only
        (ephemeral), read from the stored response (`include` code_interpreter_call.outputs)."""
        async with self._sessions() as session:
            answer = await repo.run_by_uuid(
                session, team_id=run.team_id, channel_id=run.channel_id, run_uuid=run.text
            )
        if answer is None or answer.response_id is None:
            text, blocks = WORK_GONE, [section(WORK_GONE)]
        else:
            try:
                steps = await self._ai.work_of(answer.response_id)
            except errors.ContextLost:
                steps = None
            if steps is None:
                text, blocks = WORK_GONE, [section(WORK_GONE)]
            else:
                text, blocks = work_blocks([(step.code, step.output) for step in steps])
        delivery, _ = await self._start(run, "work")
        if delivery.state == "done":
            return  # shown (an ephemeral message can't be looked for: a crash here shows it once more)
        await self._slack.post_ephemeral(place_of(run), run.user_id, text, blocks=blocks)
        await self._finish(delivery.id)

    async def deliver(
        self, run: Run, reply: ModelReply | None, files: Sequence[ThreadFile] | None = None
    ) -> None:
        """Post the answer (or the one-sentence error) and every chart of `run`. `files`: the
        thread's files, when the caller has them (else they are read)."""
        place = place_of(run)
        self._used_live[run.id] = set()
        await self._tell_rejected_files(run, place, files)
        failure = errors.from_code(run.error_code, run.error_message or "") if run.error_code else None
        if failure is None and reply is not None:
            failure = await self._answer(run, place, reply, files)
        if failure is not None:
            sentence = failure.user_message
            await self._post_once(run, place, "error", sentence, blocks=_with_start_over(sentence, run))
        await self._clear_unused_live_messages(run, place)
        if place.thread_ts is None:
            await self._slack.show_status(place, "", message_ts=run.message_ts)

    async def _answer(
        self, run: Run, place: Place, reply: ModelReply, files: Sequence[ThreadFile] | None
    ) -> errors.TutorError | None:
        """The model's text (with a Start over button) and its files; the failure to tell, if any."""
        failure = reply.failure()
        text = reply.text if failure is None else ""
        if reply.status == "incomplete" and reply.text.strip():
            text, failure = f"{reply.text}\n\n{CUT_OFF_NOTE}", None
        charts = await self._charts(run, reply)
        uploaded = {chart.filename: chart.title for chart in charts}
        text = strip_citation_markers(text)
        if not text.strip():
            parts: list[str | DisplayMath] = []
        elif self._math_images:
            parts = format_answer(text, uploaded)
        else:
            parts = list(format_reply(text, uploaded))
        if parts:
            parts = await self._with_sources(run, reply, parts, files)
        if any(isinstance(part, DisplayMath) for part in parts):
            await self._post_with_equations(run, place, parts)
        else:
            await self._post_texts(run, place, [part for part in parts if isinstance(part, str)])
        for chart in charts:
            await self._upload_once(run, place, chart)
        return failure

    async def _with_sources(
        self,
        run: Run,
        reply: ModelReply,
        parts: list[str | DisplayMath],
        files: Sequence[ThreadFile] | None,
    ) -> list[str | DisplayMath]:
        """The answer with a "Sources: …" line under it when it used documents."""
        if files is not None and not may_have_sources(run, reply, files):
            return parts
        async with self._sessions() as session:
            sources = await sources_of(session, run, reply, files)
        if not sources:
            return parts
        line = sources_line(sources)
        last = parts[-1]
        if isinstance(last, str) and len(last) + len(line) + 2 <= SLACK_CHUNK_LIMIT:
            return [*parts[:-1], f"{last}\n\n{line}"]
        return [*parts, line]

    async def _post_texts(self, run: Run, place: Place, parts: list[str]) -> None:
        for index, part in enumerate(parts):
            blocks = _with_controls(part, run) if index == len(parts) - 1 else None
            await self._post_once(run, place, f"text:{index}", part, blocks=blocks)

    async def _post_with_equations(self, run: Run, place: Place, parts: list[str | DisplayMath]) -> None:
        """Text sections with equation images in their place, in as few messages as Slack allows."""
        files = await self._equation_images(run, {p.latex for p in parts if isinstance(p, DisplayMath)})
        messages = _answer_messages(parts, files)
        for index, message in enumerate(messages):
            last = index == len(messages) - 1
            await self._post_answer_message(run, place, f"text:{index}", message, last=last)

    async def _post_answer_message(
        self, run: Run, place: Place, key: str, message: AnswerMessage, *, last: bool
    ) -> None:
        """Post with images; if Slack keeps refusing them (not processed, not found), as text."""
        controls = _controls(run, show_work=True) if last else []
        for pause in (*IMAGE_POST_RETRIES, None):
            try:
                await self._post_once(run, place, key, message.text, blocks=[*message.blocks, *controls])
                return
            except errors.SlackDeliveryFailed as exc:
                if not message.file_ids or not _refused_images(exc):
                    raise
                log.info("run %s: Slack refused the equation images of %s: %s", run.id, key, exc.detail)
                if pause is None:
                    break
                await asyncio.sleep(pause)
                await self._wait_processed(message.file_ids)
        as_text = _answer_messages(message.parts, {})
        for number, text_only in enumerate(as_text):
            more = f"{key}:{number}" if number else key
            blocks = [*text_only.blocks, *(controls if number == len(as_text) - 1 else [])]
            await self._post_once(run, place, more, text_only.text, blocks=blocks)

    async def _equation_images(self, run: Run, formulas: set[str]) -> dict[str, str]:
        """Slack file ids of the equations shown as images: each formula uploaded once per thread.

        In phases, so a ten-equation answer costs three commits, not thirty: delivery rows for
        the new formulas, then step 1 of every upload and their file ids noted, then steps 2–3
        and the rows done. A pending row with a file id is a crash after step 1; its file is used
        if the upload completed (one that never completed is invisible: it was never shared).
        """
        keys = {_equation_key(latex): latex for latex in formulas}
        async with self._sessions.begin() as session:
            known = await repo.uploaded_files_of_thread(session, thread_id=run.thread_id, keys=keys)
            started = [
                await repo.start_delivery(session, run_id=run.id, key=key)
                for key in sorted(keys.keys() - known.keys())
            ]
        files = {keys[key]: file_id for key, file_id in known.items()}
        todo: list[EquationUpload] = []
        for delivery, created in started:
            latex = keys[delivery.key]
            earlier = None if created else delivery.slack_file_id
            if earlier and (delivery.state == "done" or await self._slack.upload_state(earlier) != "missing"):
                files[latex] = earlier
                await self._finish(delivery.id, slack_file_id=earlier)
            else:
                todo.append(EquationUpload(latex, delivery.id))
        fresh = await self._upload_equations(run, todo)
        await self._wait_processed(list(fresh.values()))
        return files | fresh

    async def _upload_equations(self, run: Run, todo: list[EquationUpload]) -> dict[str, str]:
        """Render and upload, unshared; an equation mathtext or Slack refuses for good is left out."""
        for upload, png in zip(todo, await render_all([u.latex for u in todo]), strict=True):
            upload.png = png
        todo = [upload for upload in todo if upload.png is not None]
        await self._each(run, self._begin_equation, todo)
        async with self._sessions.begin() as session:
            for upload in todo:
                if upload.file_id:
                    await repo.note_delivery_file(
                        session, delivery_id=upload.delivery_id, file_id=upload.file_id
                    )
        done = await self._each(run, self._complete_equation, [upload for upload in todo if upload.file_id])
        async with self._sessions.begin() as session:
            for upload in done:
                await repo.finish_delivery(session, delivery_id=upload.delivery_id, file_id=upload.file_id)
        return {upload.latex: upload.file_id for upload in done if upload.file_id}

    async def _begin_equation(self, upload: EquationUpload) -> EquationUpload:
        assert upload.png is not None
        name = f"equation-{_equation_key(upload.latex)[5:13]}.png"
        upload.file_id, upload.url = await self._slack.begin_upload(filename=name, length=len(upload.png))
        return upload

    async def _complete_equation(self, upload: EquationUpload) -> EquationUpload:
        assert upload.png is not None and upload.file_id is not None
        await self._slack.send_upload(upload.url, upload.png)
        await self._slack.complete_upload(None, file_id=upload.file_id, title="Equation")
        return upload

    async def _each(
        self,
        run: Run,
        step: Callable[[EquationUpload], Awaitable[EquationUpload]],
        uploads: list[EquationUpload],
    ) -> list[EquationUpload]:
        """One upload step for all, side by side; those Slack refuses for good are dropped (a
        transient failure raises: the delivery is retried)."""
        limit = asyncio.Semaphore(UPLOAD_CONCURRENCY)

        async def one(upload: EquationUpload) -> EquationUpload | None:
            async with limit:
                try:
                    return await step(upload)
                except errors.SlackDeliveryFailed as exc:
                    if exc.retryable:
                        raise
                    log.warning("run %s: equation image not uploaded (%s); shown as text", run.id, exc.detail)
                    return None

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(upload)) for upload in uploads]
        return [result for task in tasks if (result := task.result()) is not None]

    async def _wait_processed(self, file_ids: Sequence[str]) -> None:
        """One deadline for all: Slack processes them side by side, so most checks find them ready."""
        deadline = asyncio.get_running_loop().time() + PROCESSING_WAIT
        for file_id in file_ids:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or not await self._slack.wait_processed(file_id, within=left):
                log.info(
                    "equation image %s not processed within %.0fs; posting anyway", file_id, PROCESSING_WAIT
                )
                return

    async def tell_rejected_files(self, run: Run, files: Sequence[ThreadFile] | None = None) -> None:
        """Before the answer starts: the files of the question the tutor couldn't use. `files`:
        the thread's files, when the caller has them."""
        await self._tell_rejected_files(run, place_of(run), files)

    async def _tell_rejected_files(
        self, run: Run, place: Place, files: Sequence[ThreadFile] | None = None
    ) -> None:
        mine = [f for f in files if f.run_id == run.id] if files is not None else await self._files_of(run)
        for file in mine:
            if file.status == "rejected":
                notice = errors.file_error(
                    file.error_code,
                    name=_shown(file.name),
                    limit_mb=self._max_file_mb,
                    type=type_label(file.filetype, file.name, file.mimetype),
                )
                await self._post_once(run, place, f"file:{file.slack_file_id}", notice.user_message)

    async def reset_notice(self, run: Run) -> None:
        await self._post_once(run, place_of(run), "reset", RESET_NOTICE)

    async def notify(self, run: Run, key: str, text: str) -> None:
        """A one-off notice in the run's thread (posted once per run and key)."""
        await self._post_once(run, place_of(run), key, text)

    async def upload_cited(self, run: Run, chart: ChartRef, number: int) -> None:
        """A chart the answer cites, uploaded while the answer is still being written; the same
        delivery row as at the end (`file:<id>`), so it is uploaded once."""
        await self._upload_once(run, place_of(run), _name_chart(chart, number))

    async def _charts(self, run: Run, reply: ModelReply) -> list[ChartUpload]:
        """Cited files in citation order, then files the code wrote during the run without citing them."""
        refs = list(reply.charts)
        container_ids = {ref.container_id for ref in refs}
        if run.create_started_at is not None and reply.ran_code:
            refs += await self._uncited_files(run.create_started_at, container_ids, refs, reply)
        uploads: list[ChartUpload] = []
        for number, ref in enumerate(refs, start=1):
            uploads.append(_name_chart(ref, number))
        return uploads

    async def _uncited_files(
        self, started: datetime, container_ids: set[str], cited: list[ChartRef], reply: ModelReply
    ) -> list[ChartRef]:
        known = {ref.file_id for ref in cited}
        found: list[ChartRef] = []
        for container_id in container_ids or set(reply.container_ids):
            try:
                files = await self._ai.list_container_files(container_id)
            except errors.TutorError:
                continue
            for item in files:
                # Everything the code wrote during this run: charts it forgot to cite, cleaned CSVs…
                if (
                    item.source == "assistant"
                    and item.created_at >= int(started.timestamp()) - 5
                    and item.id not in known
                ):
                    found.append(ChartRef(container_id, item.id, item.filename))
        return found

    async def _files_of(self, run: Run) -> list[ThreadFile]:
        async with self._sessions() as session:
            return [
                f for f in await repo.files_of_thread(session, thread_id=run.thread_id) if f.run_id == run.id
            ]

    async def _post_once(
        self, run: Run, place: Place, key: str, text: str, *, blocks: list[dict[str, Any]] | None = None
    ) -> None:
        live = await self._live_message(run, place, key)
        if live is not None:
            self._used_live.setdefault(run.id, set()).add(live)
            await self._rewrite_once(run, place, key, live, text, blocks=blocks)
            return
        delivery, created = await self._start(run, key)
        if delivery.state == "done":
            return
        if not created:
            await _settled(delivery)
            found = await self._slack.find_post(
                place, delivery_key=self._tag(run, key), oldest=run.message_ts
            )
            if found:
                await self._finish(delivery.id, slack_ts=found)
                return
            await self._attempting(delivery.id)
        try:
            ts = await self._slack.post(place, text, delivery_key=self._tag(run, key), blocks=blocks)
        except errors.SlackDeliveryFailed as exc:
            if not exc.outcome_unknown:  # Slack answered: nothing of this attempt is still landing
                await self._attempting(delivery.id, done=True)
            raise
        await self._finish(delivery.id, slack_ts=ts)

    async def _rewrite_once(
        self, run: Run, place: Place, key: str, ts: str, text: str, *, blocks: list[dict[str, Any]] | None
    ) -> None:
        """The live message becomes this part of the answer. Rewriting is repeatable, so the
        delivery row is written once, after Slack answered (one commit, not two)."""
        async with self._sessions() as session:
            done = await repo.get_delivery(session, run_id=run.id, key=key)
            if done is not None and done.state == "done":
                return
            await leases.ensure_held(session, run)  # the fence, in the same round
        await self._slack.stop_stream(place, ts)
        await self._fence(run)  # a worker frozen during that call has lost the run by now
        await self._slack.update(place, ts, text, delivery_key=self._tag(run, key), blocks=blocks)
        async with self._sessions.begin() as session:
            delivery, _ = await repo.start_delivery(session, run_id=run.id, key=key)
            await repo.finish_delivery(session, delivery_id=delivery.id, slack_ts=ts)

    async def _live_message(self, run: Run, place: Place, key: str) -> str | None:
        """The live answer's message this post goes into: text:N into the Nth, an error into the
        first; None when there is none (post a new message)."""
        messages = run.stream_messages or []
        index = 0 if key == "error" else _text_index(key)
        if index is None:
            return None
        if not messages and index == 0 and run.stream_mode == LiveMode.POSTING:
            # A crash during the preview post: it carries the first answer message's tag.
            return await self._slack.find_post(
                place, delivery_key=self._tag(run, "text:0"), oldest=run.message_ts
            )
        return messages[index] if index < len(messages) else None

    async def _clear_unused_live_messages(self, run: Run, place: Place) -> None:
        """A live answer that ran into more messages than its final form needs: the extra go.
        Every part of the answer passed through `_post_once` in this call (done ones too), so the
        messages used are known here."""
        used = self._used_live.pop(run.id, set())
        for ts in run.stream_messages or []:
            if ts not in used:
                await self._fence(run)
                await self._slack.stop_stream(place, ts)
                with contextlib.suppress(errors.SlackDeliveryFailed):
                    await self._slack.delete(place, ts)

    async def _upload_once(self, run: Run, place: Place, chart: ChartUpload) -> None:
        delivery, created = await self._start(run, f"file:{chart.file_id}")
        if delivery.state == "done":
            return
        if not created and delivery.slack_file_id:
            await _settled(delivery)
            if await self._slack.is_shared(delivery.slack_file_id, place.channel_id):
                await self._finish(delivery.id, slack_file_id=delivery.slack_file_id)
                return
        content = await self._ai.download_container_file(chart.container_id, chart.file_id)
        file_id, upload_url = await self._slack.begin_upload(filename=chart.filename, length=len(content))
        await self._note_file(delivery.id, file_id)
        await self._slack.send_upload(upload_url, content)
        await self._attempting(delivery.id)
        try:
            await self._slack.complete_upload(place, file_id=file_id, title=chart.title)
        except errors.SlackDeliveryFailed as exc:
            if not exc.outcome_unknown:
                await self._attempting(delivery.id, done=True)
            raise
        await self._finish(delivery.id, slack_file_id=file_id)
        log.info("run %s: uploaded %s to %s", run.id, chart.filename, place.channel_id)

    @staticmethod
    def _tag(run: Run, key: str) -> str:
        return f"{run.run_uuid}:{key}"

    async def _fence(self, run: Run) -> None:
        """LeaseLost unless this worker's claim on the run still stands: checked before Slack."""
        async with self._sessions() as session:
            await leases.ensure_held(session, run)

    async def _start(self, run: Run, key: str) -> tuple[Delivery, bool]:
        """The delivery row, written only while this worker's claim on the run still stands: a
        worker that was frozen past its lease (and the run claimed again) stops here, before Slack."""
        async with self._sessions.begin() as session:
            await leases.ensure_held(session, run)
            return await repo.start_delivery(session, run_id=run.id, key=key)

    async def _attempting(self, delivery_id: int, *, done: bool = False) -> None:
        """Slack is being asked now (or, `done`, has answered this attempt)."""
        async with self._sessions.begin() as session:
            await repo.mark_delivery_attempted(session, delivery_id=delivery_id, answered=done)

    async def _note_file(self, delivery_id: int, file_id: str) -> None:
        async with self._sessions.begin() as session:
            await repo.note_delivery_file(session, delivery_id=delivery_id, file_id=file_id)

    async def _finish(
        self, delivery_id: int, *, slack_ts: str | None = None, slack_file_id: str | None = None
    ) -> None:
        async with self._sessions.begin() as session:
            await repo.finish_delivery(
                session, delivery_id=delivery_id, slack_ts=slack_ts, file_id=slack_file_id
            )


async def _settled(delivery: Delivery) -> None:
    """An earlier attempt's request may still be landing at Slack (the worker died, or its call
    timed out, while Slack was handling it): wait until it can't be, then look for it."""
    if delivery.attempted_at is None:
        return
    wait = (delivery.attempted_at + timedelta(seconds=IN_FLIGHT) - utcnow()).total_seconds()
    if wait > 0:
        log.info(
            "delivery %s: waiting %.1fs for an earlier attempt to land before looking", delivery.id, wait
        )
        await asyncio.sleep(wait)


def _shown(name: str) -> str:
    """A user's file name inside a code span of our own text: inert (no markup, no mentions)."""
    return escape_mrkdwn(name.replace("`", "'"))


def _name_chart(ref: ChartRef, number: int) -> ChartUpload:
    """Give generic sandbox names (`cfile_….png`) a readable file name and title."""
    stem, dot, ext = ref.filename.rpartition(".")
    if not dot:
        stem, ext = ref.filename, "png"
    if not stem or stem.startswith("cfile_"):
        return ChartUpload(ref.file_id, ref.container_id, f"chart-{number}.{ext}", f"Chart {number}")
    title = re.sub(r"[_\-]+", " ", stem).strip()
    return ChartUpload(ref.file_id, ref.container_id, ref.filename, title[:1].upper() + title[1:])


@dataclass
class EquationUpload:
    """One equation image on its way to Slack."""

    latex: str
    delivery_id: int
    png: bytes | None = None
    file_id: str | None = None
    url: str = ""


@dataclass
class AnswerMessage:
    """One message of an answer with equations: its blocks, its notification text, its images."""

    parts: list[str | DisplayMath] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    file_ids: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(self.texts)

    @property
    def length(self) -> int:
        return sum(len(text) + 2 for text in self.texts)


def _answer_messages(parts: Sequence[str | DisplayMath], files: dict[str, str]) -> list[AnswerMessage]:
    """Sections and image blocks in answer order; a new message where one would pass Slack's
    limits (50 blocks, and the text a message carries as its notification fallback)."""
    messages = [AnswerMessage()]
    for part in parts:
        file_id = files.get(part.latex) if isinstance(part, DisplayMath) else None
        if isinstance(part, str):
            pieces = [(part, _section(part))]
        elif file_id:
            image = {"type": "image", "slack_file": {"id": file_id}, "alt_text": part.latex[:IMAGE_ALT_LIMIT]}
            pieces = [(part.fallback, image)]
        else:
            pieces = [(chunk, _section(chunk)) for chunk in split_message(part.fallback)]
        for text, block in pieces:
            current = messages[-1]
            if current.blocks and (
                len(current.blocks) >= MAX_BLOCKS or current.length + len(text) > SLACK_CHUNK_LIMIT
            ):
                current = AnswerMessage()
                messages.append(current)
            if not current.parts or current.parts[-1] is not part:
                current.parts.append(part)
            current.blocks.append(block)
            current.texts.append(text)
            if file_id:
                current.file_ids.append(file_id)
    return messages


def _section(text: str) -> dict[str, Any]:
    return section(text)


def _equation_key(latex: str) -> str:
    """The delivery key of an equation image: the same formula gets the same key in every run."""
    return "math:" + hashlib.sha256(latex.strip().encode()).hexdigest()[:40]


def _refused_images(exc: errors.SlackDeliveryFailed) -> bool:
    """Slack's answers to an `image` block whose file it can't (yet) show."""
    return exc.detail.endswith(("invalid_blocks", "file_not_found", "invalid_slack_file"))


def _text_index(key: str) -> int | None:
    """N for the key "text:N" of an answer's Nth message; None for other keys."""
    kind, _, number = key.partition(":")
    return int(number) if kind == "text" and number.isdigit() else None


def _with_start_over(text: str, run: Run) -> list[dict[str, Any]]:
    """A sentence (an error) as a section, with a small "Start over" button for its thread."""
    return [section(text), *_controls(run, show_work=False)]


def _with_controls(text: str, run: Run) -> list[dict[str, Any]]:
    """The answer's last message, with the feedback buttons, Start over and Show work."""
    return [section(text), *_controls(run, show_work=True)]


def _controls(run: Run, *, show_work: bool) -> list[dict[str, Any]]:
    return answer_controls(
        run.channel_id, run.reply_thread_ts or "", run_uuid=run.run_uuid if show_work else None
    )
