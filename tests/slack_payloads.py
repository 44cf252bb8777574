"""Slack payloads as slack.md §3 shows them, and request signing, for end-to-end tests."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

SIGNING_SECRET = "test-signing-secret"
TEAM = "T0001"
BOT_USER = "U0TUTORBOT"
ALICE = "U0ALICE"
CHANNEL = "C0MATH"
DM = "D0DMALICE"

_seq = itertools.count(1)


def new_ts() -> str:
    """A fresh, increasing Slack message ts."""
    return f"{1754900000 + next(_seq)}.{next(_seq):06d}"


def signed_headers(
    body: str,
    *,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature,
        "Content-Type": content_type,
    }


def envelope(event: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    return {
        "token": "legacy",
        "team_id": TEAM,
        "api_app_id": "A0TUTOR",
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_seq):08d}",
        "event_time": int(time.time()),
        "authorizations": [
            {"team_id": TEAM, "user_id": BOT_USER, "is_bot": True, "is_enterprise_install": False}
        ],
        "is_ext_shared_channel": False,
        "event": event,
    }


def mention(
    text: str,
    *,
    ts: str | None = None,
    thread_ts: str | None = None,
    channel: str = CHANNEL,
    user: str = ALICE,
) -> dict[str, Any]:
    ts = ts or new_ts()
    event: dict[str, Any] = {
        "type": "app_mention",
        "client_msg_id": f"msg-{ts}",
        "user": user,
        "team": TEAM,
        "channel": channel,
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts,
        "event_ts": ts,
    }
    if thread_ts:
        event.update(thread_ts=thread_ts, parent_user_id=user)
    return envelope(event)


def message(
    text: str,
    *,
    ts: str | None = None,
    thread_ts: str | None = None,
    channel: str = CHANNEL,
    user: str | None = ALICE,
    channel_type: str = "channel",
    **extra: Any,
) -> dict[str, Any]:
    ts = ts or new_ts()
    event: dict[str, Any] = {
        "type": "message",
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel": channel,
        "channel_type": channel_type,
        "team": TEAM,
    }
    if user:
        event.update(user=user, client_msg_id=f"msg-{ts}")
    if thread_ts:
        event.update(thread_ts=thread_ts, parent_user_id=ALICE)
    event.update(extra)
    return envelope(event)


def dm(text: str, *, ts: str | None = None, thread_ts: str | None = None) -> dict[str, Any]:
    return message(text, ts=ts, thread_ts=thread_ts, channel=DM, channel_type="im")


def form(**fields: str) -> str:
    return urlencode(fields)


def as_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload)


def file_share(
    text: str,
    files: list[dict[str, Any]],
    *,
    ts: str | None = None,
    thread_ts: str | None = None,
    channel: str = CHANNEL,
    channel_type: str = "channel",
) -> dict[str, Any]:
    """A `message` with subtype file_share, as Slack sends for an upload with a comment."""
    return message(
        text,
        ts=ts,
        thread_ts=thread_ts,
        channel=channel,
        channel_type=channel_type,
        subtype="file_share",
        files=files,
        upload=False,
    )


def block_action(
    action_id: str,
    value: str,
    *,
    message_ts: str,
    thread_ts: str,
    response_url: str,
    channel: str = CHANNEL,
    user: str = ALICE,
    trigger_id: str = "123.456.abc",
    element: str = "button",
) -> str:
    """A signed-ready form body for a button press (interactivity payload); `element` is the
    pressed element's type (`feedback_buttons` for a thumbs up or down)."""
    payload = {
        "type": "block_actions",
        "api_app_id": "A0TUTOR",
        "token": "legacy",
        "trigger_id": trigger_id,
        "user": {"id": user, "username": "alice", "name": "alice", "team_id": TEAM},
        "team": {"id": TEAM, "domain": "example"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "math-help"},
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
            "thread_ts": thread_ts,
        },
        "message": {
            "type": "message",
            "user": BOT_USER,
            "bot_id": "B0TUTOR",
            "text": "…",
            "ts": message_ts,
            "thread_ts": thread_ts,
            "blocks": [],
        },
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "type": element,
                "action_id": action_id,
                "block_id": "tutor_offer",
                "value": value,
                "text": {"type": "plain_text", "text": "Analyse it"},
                "action_ts": new_ts(),
            }
        ],
    }
    return form(payload=json.dumps(payload))


def view_submission(
    callback_id: str, private_metadata: str, values: dict[str, dict[str, Any]], *, user: str = ALICE
) -> str:
    """A signed-ready form body for a modal's submission; `values` is `view.state.values`."""
    payload = {
        "type": "view_submission",
        "api_app_id": "A0TUTOR",
        "token": "legacy",
        "trigger_id": "789.012.def",
        "user": {"id": user, "username": "alice", "name": "alice", "team_id": TEAM},
        "team": {"id": TEAM, "domain": "example"},
        "enterprise": None,
        "is_enterprise_install": False,
        "view": {
            "id": "V0FEEDBACK",
            "team_id": TEAM,
            "type": "modal",
            "callback_id": callback_id,
            "private_metadata": private_metadata,
            "blocks": [],
            "state": {"values": values},
            "hash": "1764670000.abcdef",
            "app_id": "A0TUTOR",
            "bot_id": "B0TUTOR",
        },
        "response_urls": [],
    }
    return form(payload=json.dumps(payload))


def slash_command(text: str, *, response_url: str, channel: str = CHANNEL, user: str = ALICE) -> str:
    return form(
        token="legacy",
        team_id=TEAM,
        team_domain="example",
        channel_id=channel,
        channel_name="math-help",
        user_id=user,
        user_name="alice",
        command="/tutor",
        text=text,
        api_app_id="A0TUTOR",
        is_enterprise_install="false",
        response_url=response_url,
        trigger_id="123.456.abc",
    )


FORM = "application/x-www-form-urlencoded"
