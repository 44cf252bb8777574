"""Events API: messages and mentions become stored questions before Slack gets its ack."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.response import BoltResponse

from bot.files import SharedFile
from bot.inbox import Question
from bot.tutor import Tutor

log = logging.getLogger(__name__)

#: Message subtypes that are a person talking; everything else (edits, joins, bots…) is ignored.
HUMAN_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


def parse_question(body: dict[str, Any], *, bot_user_id: str | None) -> Question | None:
    """The question in an `app_mention`/`message` event, or None if it is not a person's new message."""
    event = body.get("event") or {}
    if event.get("type") not in ("app_mention", "message"):
        return None
    user = event.get("user")
    if (
        not user
        or user == bot_user_id
        or event.get("bot_id")
        or event.get("subtype") not in HUMAN_SUBTYPES
        or event.get("edited")  # an edit re-fires app_mention: the original was already answered
        or event.get("hidden")
    ):
        return None
    text = str(event.get("text") or "")
    mentioned = event["type"] == "app_mention" or (bool(bot_user_id) and f"<@{bot_user_id}" in text)
    channel = str(event.get("channel") or "")
    is_dm = event.get("channel_type") == "im" or channel.startswith("D")
    ts = str(event.get("ts") or "")
    thread_ts = event.get("thread_ts")
    if not channel or not ts:
        return None
    if is_dm:
        key, reply_to = (thread_ts, thread_ts) if thread_ts else ("", None)
    else:
        key = reply_to = thread_ts or ts
    return Question(
        # The workspace the app is installed in; in a Slack Connect channel event.team may be another org.
        team_id=str(body.get("team_id") or event.get("team") or ""),
        channel_id=channel,
        message_ts=ts,
        thread_key=key,
        reply_thread_ts=reply_to,
        user_id=str(user),
        text=_strip_bot_mention(text, bot_user_id),
        is_mention=mentioned,
        is_dm=is_dm,
        event_id=body.get("event_id"),
        files=tuple(
            SharedFile.from_slack(f) for f in event.get("files") or () if isinstance(f, dict) and f.get("id")
        ),
    )


def _strip_bot_mention(text: str, bot_user_id: str | None) -> str:
    return MENTION.sub(lambda m: "" if m.group(1) == bot_user_id else m.group(0), text).strip()


def register(app: AsyncApp, tutor: Tutor) -> None:
    async def store_questions(
        body: dict[str, Any], context: AsyncBoltContext, next: Callable[[], Awaitable[BoltResponse]]
    ) -> BoltResponse:
        """Global middleware: runs before Bolt acks, so a question is durable before Slack hears 200."""
        if body.get("type") != "event_callback" or (body.get("event") or {}).get("type") not in (
            "app_mention",
            "message",
        ):
            return await next()
        question = parse_question(body, bot_user_id=context.bot_user_id)
        if question is not None:
            await tutor.accept(question)
        return BoltResponse(status=200, body="")

    app.middleware(store_questions)


def acknowledge_the_rest(app: AsyncApp) -> None:
    """Every subscribed event must get a 200: Slack counts a 404 as a failed delivery."""

    async def acknowledge(event: dict[str, Any]) -> None:
        log.debug("event %s acknowledged", event.get("type"))

    app.event(re.compile(".*"))(acknowledge)
