"""Interactivity: buttons on the tutor's messages (feedback too, and the modal a thumbs-down
opens), and the "Reset tutor here" message shortcut.

A button acts on the thread it was clicked in, as Slack reports it (`container`, `channel`); the
`value` it carries is only a hint, checked against that. Anyone can post a message with a button
whose value names another channel's thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond

from bot.handlers.events import CHANNEL_ID, TEAM_ID, TS, USER_ID
from bot.tutor import Tutor
from bot.ui import (
    ANALYSE_ACTION,
    FEEDBACK_ACTION,
    FEEDBACK_MODAL,
    LIBRARY_CLEAR_ACTION,
    LIBRARY_KEEP_ACTION,
    RESET_SHORTCUT,
    SHOW_WORK_ACTION,
    START_OVER_ACTION,
    FeedbackButton,
    ThreadButton,
    WorkButton,
    feedback_comment,
)
from db.models import Rating

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clicked:
    """Where a button was pressed: the channel, the thread's key and the message carrying the button."""

    team_id: str
    channel_id: str
    #: The thread root's ts, or "" for the top level of a DM.
    thread_key: str
    message_ts: str
    user_id: str


def _str(obj: object, *keys: str) -> str:
    """obj[k1][k2]… when every step is an object and the end is a string, else ""."""
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if isinstance(obj, str) else ""


def _team(body: dict[str, Any]) -> str:
    team = _str(body, "team", "id") or _str(body, "user", "team_id")
    return team if TEAM_ID.fullmatch(team) else ""


def _user(body: dict[str, Any]) -> str:
    user = _str(body, "user", "id")
    return user if USER_ID.fullmatch(user) else ""


def thread_key(channel_id: str, message_ts: str, thread_ts: str) -> str:
    """The tutor thread a message belongs to. A message that is not a reply (no thread_ts, or a
    thread parent, whose thread_ts is its own ts) is a thread root, except at the top level of a
    DM, which is one conversation (key "")."""
    if thread_ts and thread_ts != message_ts:
        return thread_ts
    return "" if channel_id.startswith("D") else message_ts


def clicked(body: dict[str, Any], action: dict[str, Any]) -> Clicked | None:
    """Where a block_actions press happened, from Slack's own fields; None if that can't be told.

    The answer (or offer) carrying the button sits inside the thread, so `container.thread_ts` is the
    thread root; a top-level answer in a DM has none (thread key "").
    """
    channel = _str(body, "container", "channel_id") or _str(body, "channel", "id")
    message_ts = _str(body, "container", "message_ts")
    thread_ts = _str(body, "container", "thread_ts")
    if not CHANNEL_ID.fullmatch(channel) or not TS.fullmatch(message_ts):
        log.warning("ignored a %s press without a channel and message", _str(action, "action_id"))
        return None
    if thread_ts and not TS.fullmatch(thread_ts):
        log.warning("ignored a %s press with a malformed thread", _str(action, "action_id"))
        return None
    where = Clicked(_team(body), channel, thread_key(channel, message_ts, thread_ts), message_ts, _user(body))
    hint = _str(action, "value")
    if _str(action, "action_id") in (SHOW_WORK_ACTION, FEEDBACK_ACTION):
        return where  # its value names an answer, checked by the use case
    if hint and ThreadButton.decode(hint) != ThreadButton(where.channel_id, where.thread_key):
        log.warning(
            "%s pressed in %s/%s carries the value %r for another thread; acting where it was pressed",
            _str(action, "action_id"),
            where.channel_id,
            where.thread_key or "top level",
            hint[:80],
        )
    return where


def register(app: AsyncApp, tutor: Tutor) -> None:
    async def analyse(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        where = clicked(body, action)
        names = None
        if where is not None:
            names = await tutor.start_analysis(
                team_id=where.team_id,
                channel_id=where.channel_id,
                thread_ts=where.thread_key,
                user_id=where.user_id,
                offer_ts=where.message_ts,
            )
        await ack()
        if names is not None:
            listed = ", ".join(f"`{name}`" for name in names) or "your file"
            await respond(replace_original=True, text=f"On it: analysing {listed}…")

    async def start_over(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        where = clicked(body, action)
        if where is not None:
            await tutor.request_thread_reset(
                team_id=where.team_id,
                channel_id=where.channel_id,
                thread_key=where.thread_key,
                user_id=where.user_id,
                # The answer's ts: pressing the same button twice resets once.
                key_ts=where.message_ts,
            )
        await ack()

    async def show_work(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        where = clicked(body, action)
        answer = WorkButton.decode(_str(action, "value"))
        press_ts = _str(action, "action_ts")
        if where is not None and answer is not None and TS.fullmatch(press_ts):
            await tutor.request_work(
                team_id=where.team_id,
                channel_id=where.channel_id,
                thread_key=where.thread_key,
                user_id=where.user_id,
                # Each press shows the work again (to whoever pressed).
                key_ts=press_ts,
                answer_run=answer.run_uuid,
            )
        elif where is not None:
            log.warning("ignored a %s press without an answer or press time", SHOW_WORK_ACTION)
        await ack()

    async def feedback(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        """A thumbs up or down under an answer; a thumbs-down then asks what was wrong."""
        where = clicked(body, action)
        choice = FeedbackButton.decode(_str(action, "value"))
        recorded = False
        if where is not None and choice is not None and where.team_id and where.user_id:
            recorded = await tutor.record_feedback(
                team_id=where.team_id,
                channel_id=where.channel_id,
                user_id=where.user_id,
                run_uuid=choice.run_uuid,
                rating=choice.rating,
            )
        elif where is not None:
            log.warning("ignored a %s click without an answer or a person", FEEDBACK_ACTION)
        await ack()
        trigger_id = _str(body, "trigger_id")
        if (
            recorded
            and where is not None
            and choice is not None
            and choice.rating == Rating.UNHELPFUL
            and trigger_id
        ):
            await tutor.ask_what_was_wrong(
                team_id=where.team_id, trigger_id=trigger_id, run_uuid=choice.run_uuid
            )

    async def what_was_wrong(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        """The thumbs-down modal's submission: its text (or nothing) goes on that rating."""
        answer = WorkButton.decode(_str(view, "private_metadata"))
        team_id, user_id = _team(body), _user(body)
        if answer is not None and team_id and user_id:
            await tutor.note_what_was_wrong(
                team_id=team_id, user_id=user_id, run_uuid=answer.run_uuid, comment=feedback_comment(view)
            )
        else:
            log.warning("ignored a %s submission without its answer or person", FEEDBACK_MODAL)
        await ack()

    async def reset_here(ack: AsyncAck, shortcut: dict[str, Any], respond: AsyncRespond) -> None:
        channel_id = _str(shortcut, "channel", "id")
        message_ts = _str(shortcut, "message", "ts")
        thread_ts = _str(shortcut, "message", "thread_ts")
        started = False
        if (
            CHANNEL_ID.fullmatch(channel_id)
            and TS.fullmatch(message_ts)
            and (not thread_ts or TS.fullmatch(thread_ts))
        ):
            action_ts = _str(shortcut, "action_ts")
            started = await tutor.request_thread_reset(
                team_id=_team(shortcut),
                channel_id=channel_id,
                # The shortcut names a message, not an answer: a thread parent means its thread.
                thread_key=thread_ts or ("" if channel_id.startswith("D") else message_ts),
                user_id=_user(shortcut),
                key_ts=action_ts if TS.fullmatch(action_ts) else message_ts,
            )
        else:
            log.warning("ignored a %s shortcut without a channel and message", RESET_SHORTCUT)
        await ack()
        if not started:
            await respond(response_type="ephemeral", text="That message isn't in a tutor thread.")

    async def library_clear(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        """The confirmation under `/tutor library clear`, for the channel it was asked in."""
        channel_id = _str(body, "channel", "id") or _str(body, "container", "channel_id")
        team_id = _team(body)
        if not (CHANNEL_ID.fullmatch(channel_id) and team_id and _str(action, "value") == channel_id):
            log.warning("ignored a %s press without its channel", LIBRARY_CLEAR_ACTION)
            await ack()
            return
        count = await tutor.library.clear(team_id=team_id, channel_id=channel_id)
        tutor.wake()  # the worker deletes the files at OpenAI
        await ack()
        files = f"{count} file{'' if count == 1 else 's'}"
        await respond(replace_original=True, text=f"Emptied this channel's library: {files} removed.")

    async def library_keep(ack: AsyncAck, respond: AsyncRespond) -> None:
        await ack()
        await respond(replace_original=True, text="The library stays as it is.")

    app.action(LIBRARY_CLEAR_ACTION)(library_clear)
    app.action(LIBRARY_KEEP_ACTION)(library_keep)
    app.action(ANALYSE_ACTION)(analyse)
    app.action(START_OVER_ACTION)(start_over)
    app.action(SHOW_WORK_ACTION)(show_work)
    app.action(FEEDBACK_ACTION)(feedback)
    app.view_submission(FEEDBACK_MODAL)(what_was_wrong)
    app.shortcut(RESET_SHORTCUT)(reset_here)
