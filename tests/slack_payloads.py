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
