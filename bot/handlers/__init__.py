"""Slack listeners: parse, store, ack. No business logic lives here."""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.error import BoltUnhandledRequestError
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.handlers import actions, commands, events, installs, surfaces
from bot.logs import log_context
from bot.metrics import Metrics
from bot.tutor import Tutor

log = logging.getLogger(__name__)

#: What a metric label may hold of a request's type (Slack's names are short snake_case).
_KIND = re.compile(r"[a-z][a-z0-9_.]{0,39}")


def register(app: AsyncApp, tutor: Tutor, metrics: Metrics) -> None:
    events.register(app, tutor, metrics)
    commands.register(app, tutor)
    actions.register(app, tutor)
    surfaces.register(app, tutor)
    installs.register(app, tutor)
    events.acknowledge_the_rest(app)  # last: Bolt runs the first listener that matches
    app.error(on_error)


async def on_error(error: Exception, body: dict[str, Any]) -> BoltResponse | None:
    """Bolt's error handler: one line for what Slack sent or a database outage, a traceback for bugs.

    Needs `AsyncApp(raise_error_for_unhandled_request=True)`: Bolt's own answer to a request no
    listener matches is a 404 (a failed delivery for Slack) and a many-line suggestion in the log.
    """
    if isinstance(error, BoltUnhandledRequestError):
        log.warning("acknowledged a Slack request no listener handles (%s)", describe(body))
        return BoltResponse(status=200, body="")
    if events.database_down(error):
        log.error("database unavailable (%s) for a %s; answered 503", type(error).__name__, describe(body))
        return BoltResponse(status=503, body="")
    log.error("failed to handle a %s", describe(body), exc_info=error)
    return None


async def dispatch(app: AsyncApp, request: AsyncBoltRequest, metrics: Metrics) -> BoltResponse:
    """Both transports (HTTP and Socket Mode) hand every routable request to Bolt here: it is
    counted as received, and as acked when Slack gets its 200; its log lines carry where it is from."""
    kind = request_kind(request.body)
    metrics.received(kind)
    with log_context(**where(request.body)):
        response = await app.async_dispatch(request)
    if response.status == 200:
        metrics.acked(kind)
    return response


def request_kind(body: object) -> str:
    """The request's type as a metric label: the event's type, `slash_command`, `block_actions`…"""
    if not isinstance(body, dict):
        return "other"
    event = body.get("event")
    if body.get("type") == "event_callback" and isinstance(event, dict):
        kind = event.get("type")
    else:
        kind = "slash_command" if "command" in body else body.get("type")
    return kind if isinstance(kind, str) and _KIND.fullmatch(kind) else "other"


def where(body: dict[str, Any]) -> dict[str, str | None]:
    """The workspace, channel and thread a request is about, for its log lines."""
    event, channel, team, container = (
        _object(body, name) for name in ("event", "channel", "team", "container")
    )
    return {
        "team": _first(body.get("team_id"), team.get("id")),
        "channel": _first(event.get("channel"), body.get("channel_id"), channel.get("id")),
        "thread_ts": _first(event.get("thread_ts"), event.get("ts"), container.get("thread_ts")),
    }


def _object(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    return value if isinstance(value, dict) else {}


def _first(*values: object) -> str | None:
    return next((value[:40] for value in values if isinstance(value, str) and value), None)


def describe(body: object) -> str:
    """What kind of Slack request this is, for a log line (no user content)."""
    if not isinstance(body, dict):
        return "request"
    kind = body.get("type") or ("slash command" if "command" in body else "request")
    event = body.get("event")
    if kind == "event_callback" and isinstance(event, dict):
        kind = f"{event.get('type')} event"
    return str(kind)[:60]


#: Fields Bolt reads while routing: a string, or (for the first group) an object with a string id.
_ID_OBJECT_FIELDS = ("team", "user", "channel", "enterprise")
_STRING_FIELDS = (
    "type",
    "subtype",
    "team_id",
    "user_id",
    "channel_id",
    "enterprise_id",
    "callback_id",
    "command",
    "action_id",
    "block_id",
    "thread_ts",
    "response_url",
    "function_execution_id",
    "bot_access_token",
)
_OBJECT_FIELDS = ("event", "view", "message", "previous_message", "item", "assistant_thread", "function_data")
_NESTED = ("event", "message", "previous_message", "item", "assistant_thread", "view", "container")


def payload_problem(body: object) -> str | None:
    """What is wrong with the shape of a signed payload, or None when Bolt can route it.

    Bolt reads ids and types out of a request before any listener runs, assuming Slack's shapes
    (`team` an object or a string, `actions` a list of objects…); anything else raises inside
    Bolt. Checked first, so such a request gets one warning and its 200 instead of a 500.
    """
    if not isinstance(body, dict):
        return f"the payload is a JSON {type(body).__name__}, not an object"
    problem = _fields_problem(body, "")
    if problem:
        return problem
    for name in _NESTED:
        nested = body.get(name)
        if isinstance(nested, dict):
            problem = _fields_problem(nested, f"{name}.")
            for inner in ("message", "previous_message", "item", "assistant_thread"):
                if problem is None and isinstance(nested.get(inner), dict):
                    problem = _fields_problem(nested[inner], f"{name}.{inner}.")
            if problem:
                return problem
    for name in ("authorizations", "actions", "response_urls"):
        items = body.get(name)
        if items is None:
            continue
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            return f"{name} is not a list of objects"
        for item in items:
            problem = _fields_problem(item, f"{name}[].")
            if problem:
                return problem
    if body.get("type") == "event_callback" and not (
        isinstance(body.get("event"), dict) and isinstance(body["event"].get("type"), str)
    ):
        return "an event_callback without an event"
    if body.get("type") == "block_actions" and not body.get("actions"):
        return "block_actions without actions"
    return None


def _fields_problem(obj: dict[str, Any], prefix: str) -> str | None:
    for name in _STRING_FIELDS:
        if obj.get(name) is not None and not isinstance(obj[name], str):
            return f"{prefix}{name} is a {type(obj[name]).__name__}"
    for name in _ID_OBJECT_FIELDS:
        value = obj.get(name)
        if value is None or isinstance(value, str):
            continue
        if not isinstance(value, dict):
            return f"{prefix}{name} is a {type(value).__name__}"
        for key in ("id", "team_id", "enterprise_id"):
            if value.get(key) is not None and not isinstance(value[key], str):
                return f"{prefix}{name}.{key} is a {type(value[key]).__name__}"
    for name in _OBJECT_FIELDS:
        if obj.get(name) is not None and not isinstance(obj[name], dict):
            return f"{prefix}{name} is a {type(obj[name]).__name__}"
    return None


__all__ = ["describe", "dispatch", "on_error", "payload_problem", "register", "request_kind"]
