"""The Slack app manifest for `slack-tutor manifest`: built as data, dumped by a YAML or JSON library.

One Request URL (`<url>/slack/events`) serves events, the /tutor command and interactivity; Bolt
routes them. In Socket Mode no URL is sent at all. Limits are those of Slack's manifest schema
(slackapi/manifest-schema, v2, the version that declares `features.agent_view`).
"""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

EVENTS_PATH = "/slack/events"
#: Bolt's OAuth redirect path (distribution mode; bot.app serves it).
OAUTH_REDIRECT_PATH = "/slack/oauth_redirect"
NAME_MAX = 35  # display_information.name
BOT_NAME_MAX = 80  # features.bot_user.display_name
URL_MAX = 3000  # slash_commands[].url; the request URLs may have 3,500

#: Each scope is there for a call or an event of the code (tests/test_manifest.py checks both ways).
BOT_SCOPES = (
    "app_mentions:read",  # app_mention
    "assistant:write",  # assistant.threads.setSuggestedPrompts / setTitle; the agent view
    "channels:history",  # message.channels; conversations.replies
    "chat:write",  # chat.postMessage; assistant.threads.setStatus
    "commands",  # /tutor and the Reset tutor here shortcut
    "files:read",  # files.info and downloading shared files
    "files:write",  # chart uploads (files.getUploadURLExternal / completeUploadExternal)
    "groups:history",  # message.groups
    "im:history",  # message.im
    "mpim:history",  # message.mpim (group DMs)
    "reactions:write",  # the 👀 on a top-level DM question
    "users:read",  # users.info, to address the asker by name
)
#: The events bot/handlers listen for; app_home_opened (tab "messages") is the agent view's "DM opened",
#: assistant_thread_started the same for apps still on the older assistant pane.
BOT_EVENTS = (
    "app_home_opened",
    "app_mention",
    "app_uninstalled",
    "assistant_thread_started",
    "message.channels",
    "message.groups",
    "message.im",
    "message.mpim",
    "tokens_revoked",
)
DESCRIPTION = "Math tutor and data visualizer. Mention me in a thread, DM me, or share a CSV/XLSX."
SUGGESTED_PROMPTS = (
    ("Solve an equation", "Solve 3x + 11 = 14 step by step"),
    ("Explain with a plot", "Explain derivatives with a plot"),
    ("Analyse my data", "Analyse a CSV I'll share"),
)


class ManifestError(ValueError):
    """An argument no Slack manifest can carry; the message tells the operator what to give instead."""


def events_url(base_url: str) -> str:
    """`<base_url>/slack/events`, once `base_url` is checked to be an https:// URL Slack accepts."""
    if any(c.isspace() for c in base_url):
        raise ManifestError(f"{base_url!r} contains a space")
    parts = urlsplit(base_url)
    if parts.scheme != "https":
        raise ManifestError(f"{base_url!r} must start with https:// (Slack sends events only over TLS)")
    if not parts.hostname:
        raise ManifestError(f"{base_url!r} has no host; give the bot's public address, https://HOST[/PATH]")
    try:
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        raise ManifestError(f"{base_url!r} has a port that is not a number") from None
    if parts.username is not None or parts.password is not None:
        raise ManifestError(f"{base_url!r} has a user name or password; Slack signs its requests instead")
    if parts.query or base_url.endswith("?"):
        raise ManifestError(f"{base_url!r} has a query string; give only https://HOST[/PATH]")
    if parts.fragment or base_url.endswith("#"):
        raise ManifestError(f"{base_url!r} has a #fragment; give only https://HOST[/PATH]")
    path = parts.path.rstrip("/").removesuffix(EVENTS_PATH)
    url = f"https://{parts.netloc}{path}{EVENTS_PATH}"
    if len(url) > URL_MAX:
        raise ManifestError(f"{url[:40]}… is {len(url)} characters long; Slack allows {URL_MAX}")
    return url


def app_name(name: str) -> str:
    return _display_text(name, limit=NAME_MAX, what="the app's name")


def bot_display_name(name: str) -> str:
    return _display_text(name, limit=BOT_NAME_MAX, what="the bot's display name")


def _display_text(text: str, *, limit: int, what: str) -> str:
    # Refused rather than truncated: a cut name is a surprise found only in Slack, after install.
    if not text.strip():
        raise ManifestError(f"{what} is empty")
    if any(not c.isprintable() for c in text):
        raise ManifestError(f"{what} must be one line of printable characters")
    if len(text) > limit:
        raise ManifestError(f"{what} is {len(text)} characters long; Slack allows at most {limit}")
    return text


def build(*, name: str, bot_name: str, request_url: str | None) -> dict[str, Any]:
    """The manifest as data: for HTTP with `request_url`, for Socket Mode without (no URL anywhere)."""
    with_url: dict[str, Any] = {"request_url": request_url} if request_url else {}
    command: dict[str, Any] = {"command": "/tutor"}
    if request_url:
        command["url"] = request_url
    command |= {
        "description": "Reset the tutor, pick a profile, manage the channel library, or show help",
        "usage_hint": (
            "help | reset | status | profile [math|data] | instructions <text> | auto on|off | "
            "library [add|remove <name>|clear]"
        ),
        "should_escape": False,
    }
    return {
        "_metadata": {"major_version": 2, "minor_version": 1},
        "display_information": {
            "name": app_name(name),
            "description": DESCRIPTION,
        },
        "features": {
            "app_home": {
                "home_tab_enabled": True,
                "messages_tab_enabled": True,
                "messages_tab_read_only_enabled": False,
            },
            "bot_user": {"display_name": bot_display_name(bot_name), "always_online": True},
            "agent_view": {
                "agent_description": (
                    "Ask math questions, share CSV/XLSX files for charts, or upload a photo of a problem."
                ),
                "suggested_prompts": [{"title": t, "message": m} for t, m in SUGGESTED_PROMPTS],
            },
            "shortcuts": [
                {
                    "name": "Reset tutor here",
                    "type": "message",
                    "callback_id": "tutor_reset_thread",
                    "description": "Make the tutor forget this thread's conversation and files",
                }
            ],
            "slash_commands": [command],
        },
        "oauth_config": _oauth_config(request_url),
        "settings": {
            "event_subscriptions": with_url | {"bot_events": list(BOT_EVENTS)},
            "interactivity": {"is_enabled": True} | with_url,
            "org_deploy_enabled": False,
            "socket_mode_enabled": request_url is None,
            "token_rotation_enabled": False,
        },
    }


def _oauth_config(request_url: str | None) -> dict[str, Any]:
    """The scopes; with a URL also where Slack sends an installer back (`/slack/oauth_redirect`)."""
    config: dict[str, Any] = {}
    if request_url:
        config["redirect_urls"] = [request_url.removesuffix(EVENTS_PATH) + OAUTH_REDIRECT_PATH]
    return config | {"scopes": {"bot": list(BOT_SCOPES)}}


def render(manifest: dict[str, Any], *, format: Literal["yaml", "json"] = "yaml") -> str:
    if format == "json":
        return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True, width=110)
