"""Events API: messages and mentions become stored questions before Slack gets its ack."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.response import BoltResponse
from sqlalchemy import exc as sa_exc

from bot.files import SharedFile
from bot.inbox import Question
from bot.metrics import Metrics
from bot.tutor import Tutor

log = logging.getLogger(__name__)

#: Message subtypes that are a person talking; everything else (edits, joins, bots…) is ignored.
HUMAN_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")

# Slack's shapes (at most 32 characters): what is stored as a thread's key and sent back to Slack.
TS = re.compile(r"[0-9]{1,16}\.[0-9]{1,15}")  # 1700000000.000100
CHANNEL_ID = re.compile(r"[CDG][A-Z0-9]{1,31}")
USER_ID = re.compile(r"[UW][A-Z0-9]{1,31}")
TEAM_ID = re.compile(r"[TE][A-Z0-9]{1,31}")
FILE_ID = re.compile(r"F[A-Z0-9]{1,31}")
EVENT_ID = re.compile(r"[A-Za-z0-9]{1,64}")


class InvalidEvent(ValueError):
    """A signed event whose fields don't have the shapes Slack gives them; it is not stored."""


def parse_question(body: dict[str, Any], *, bot_user_id: str | None) -> Question | None:
    """The question in an `app_mention`/`message` event, or None if it is not a person's new message.

    Raises InvalidEvent when an id or ts is not a string of Slack's shape (it would be stored as
    the thread's key and sent back to Slack).
    """
    event = body.get("event")
    if not isinstance(event, dict) or event.get("type") not in ("app_mention", "message"):
        return None
    user = event.get("user")
    subtype = event.get("subtype")
    if (
        not user
        or user == bot_user_id
        or event.get("bot_id")
        or not (subtype is None or isinstance(subtype, str))
        or subtype not in HUMAN_SUBTYPES
        or event.get("edited")  # an edit re-fires app_mention: the original was already answered
        or event.get("hidden")
    ):
        return None
    channel = _field(event, "channel", CHANNEL_ID)
    ts = _field(event, "ts", TS)
    thread_ts = _field(event, "thread_ts", TS, required=False)
    user_id = _field(event, "user", USER_ID)
    team_id = body.get("team_id") or event.get("team")  # the installation's workspace comes first
    if team_id is not None and not (isinstance(team_id, str) and TEAM_ID.fullmatch(team_id)):
        raise InvalidEvent(f"team {_show(team_id)} is not a Slack team id")
    text = event.get("text")
    if text is not None and not isinstance(text, str):
        raise InvalidEvent(f"text is a {type(text).__name__}, not a string")
    text = (text or "").replace("\x00", "")  # PostgreSQL text can't hold NUL
    mentioned = event["type"] == "app_mention" or (bool(bot_user_id) and f"<@{bot_user_id}" in text)
    is_dm = event.get("channel_type") == "im" or channel.startswith("D")
    if is_dm:
        key, reply_to = (thread_ts, thread_ts) if thread_ts else ("", None)
    else:
        key = reply_to = thread_ts or ts
    event_id = body.get("event_id")
    return Question(
        # The workspace the app is installed in; in a Slack Connect channel event.team may be another org.
        team_id=team_id or "",
        channel_id=channel,
        message_ts=ts,
        thread_key=key,
        reply_thread_ts=reply_to,
        user_id=user_id,
        text=_strip_bot_mention(text, bot_user_id),
        is_mention=mentioned,
        is_dm=is_dm,
        event_id=event_id if isinstance(event_id, str) and EVENT_ID.fullmatch(event_id) else None,
        files=_files(event.get("files"), where=f"{channel}/{ts}"),
    )


def _field(event: dict[str, Any], name: str, shape: re.Pattern[str], *, required: bool = True) -> str:
    value = event.get(name)
    if value is None and not required:
        return ""
    if isinstance(value, str) and shape.fullmatch(value):
        return value
    raise InvalidEvent(f"{name} {_show(value)} is not a Slack {name}")


def _show(value: object) -> str:
    """A value for a log line: short, one line."""
    return repr(value)[:40]


def _files(value: object, *, where: str) -> tuple[SharedFile, ...]:
    """The event's files; entries Slack would never send are left out (the text is still answered)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        log.warning("event %s: files is a %s, not a list; ignored", where, type(value).__name__)
        return ()
    files: list[SharedFile] = []
    skipped = 0
    for obj in value:
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("id"), str)
            or not FILE_ID.fullmatch(obj["id"])
        ):
            skipped += 1
            continue
        try:
            files.append(SharedFile.from_slack(obj))
        except (TypeError, ValueError, OverflowError):
            skipped += 1
    if skipped:
        log.warning("event %s: %d of %d files are malformed; ignored", where, skipped, len(value))
    return tuple(files)


def _strip_bot_mention(text: str, bot_user_id: str | None) -> str:
    return MENTION.sub(lambda m: "" if m.group(1) == bot_user_id else m.group(0), text).strip()


def database_down(exc: BaseException) -> bool:
    """Is this the database being unreachable (worth a retry later), rather than a bug?"""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.DisconnectionError
        | sa_exc.TimeoutError
        | OSError
        | TimeoutError,
    )


def _authorized_bot_user(body: dict[str, Any]) -> str | None:
    """The bot user Slack delivered this event to (`authorizations`), while auth.test is unanswered."""
    authorizations = body.get("authorizations")
    if isinstance(authorizations, list) and authorizations and isinstance(authorizations[0], dict):
        first = authorizations[0]
        user_id = first.get("user_id")
        if first.get("is_bot") and isinstance(user_id, str) and USER_ID.fullmatch(user_id):
            return user_id
    return None


def register(app: AsyncApp, tutor: Tutor, metrics: Metrics) -> None:
    async def store_questions(
        body: dict[str, Any], context: AsyncBoltContext, next: Callable[[], Awaitable[BoltResponse]]
    ) -> BoltResponse:
        """Global middleware: runs before Bolt acks, so a question is durable before Slack hears 200."""
        event = body.get("event")
        if body.get("type") != "event_callback" or not isinstance(event, dict):
            return await next()
        if event.get("type") not in ("app_mention", "message"):
            return await next()
        try:
            question = parse_question(body, bot_user_id=context.bot_user_id or _authorized_bot_user(body))
        except InvalidEvent as exc:
            log.warning("ignored a malformed %s event: %s", event.get("type"), exc)
            return BoltResponse(status=200, body="")
        if question is not None:
            try:
                if await tutor.accept(question):
                    metrics.stored(event["type"])
            except Exception as exc:
                if not database_down(exc):
                    raise
                # Not stored, so not acked: Slack delivers it again.
                log.error(
                    "question %s/%s not stored, database unavailable (%s); answered 503 so Slack retries",
                    question.channel_id,
                    question.message_ts,
                    type(exc).__name__,
                )
                return BoltResponse(status=503, body="")
        return BoltResponse(status=200, body="")

    app.middleware(store_questions)


def acknowledge_the_rest(app: AsyncApp) -> None:
    """Every subscribed event must get a 200: Slack counts a 404 as a failed delivery."""

    async def acknowledge(event: dict[str, Any]) -> None:
        log.debug("event %s acknowledged", event.get("type"))

    app.event(re.compile(".*"))(acknowledge)
