"""`slack-tutor manifest`: what an operator pastes into Slack's *Create New App → From a manifest*.

Every manifest is checked against rules written here from Slack's manifest schema
(`slackapi/manifest-schema`, `schemas/manifest.schema.2.0.0.json`: required keys, lengths, URL
patterns, which keys each section allows) and from Slack's event and scope references (the
schema only says events and scopes are strings of at most 50 characters).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.cli import main
from bot.handlers.events import parse_question
from tests.slack_payloads import BOT_USER, message, new_ts

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "slack-tutor")
URL = "https://tutor.example.org"
EVENTS_URL = f"{URL}/slack/events"

# --- Rules from the schema (v2: the version that declares features.agent_view) -------------------

TOP_LEVEL_KEYS = {"$schema", "_metadata", "display_information", "features", "oauth_config", "settings"}
METADATA_KEYS = {"schema_version", "min_version", "major_version", "minor_version"}
DISPLAY_KEYS = {"name", "description", "background_color", "long_description"}
FEATURE_KEYS = {
    "app_home",
    "bot_user",
    "functions",
    "shortcuts",
    "slash_commands",
    "workflow_steps",
    "unfurl_domains",
    "assistant_view",
    "agent_view",
    "code_channels",
}
APP_HOME_KEYS = {"home_tab_enabled", "messages_tab_enabled", "messages_tab_read_only_enabled"}
BOT_USER_KEYS = {"display_name", "always_online"}
AGENT_VIEW_KEYS = {"agent_description", "suggested_prompts", "actions"}
PROMPT_KEYS = {"title", "message"}
SHORTCUT_KEYS = {"name", "type", "callback_id", "description"}
COMMAND_KEYS = {"command", "url", "description", "usage_hint", "should_escape"}
OAUTH_KEYS = {"redirect_urls", "scopes", "token_management_enabled", "pkce_enabled"}
SCOPE_KEYS = {"user", "bot", "user_optional", "bot_optional"}
SETTINGS_KEYS = {
    "allowed_ip_address_ranges",
    "event_subscriptions",
    "incoming_webhooks",
    "interactivity",
    "org_deploy_enabled",
    "socket_mode_enabled",
    "is_hosted",
    "token_rotation_enabled",
    "siws_links",
    "hermes_app_type",
    "function_runtime",
    "is_mcp_enabled",
}
EVENT_SUBSCRIPTION_KEYS = {"request_url", "user_events", "bot_events", "metadata_subscriptions"}
INTERACTIVITY_KEYS = {"is_enabled", "request_url", "message_menu_options_url"}
URL_PATTERN = re.compile(r"^https?://")

# --- Names Slack knows (events and scopes references on docs.slack.dev), to catch typos ----------

KNOWN_BOT_EVENTS = {
    "app_home_opened",
    "app_mention",
    "app_uninstalled",
    "assistant_thread_context_changed",
    "assistant_thread_started",
    "channel_created",
    "channel_rename",
    "file_shared",
    "link_shared",
    "member_joined_channel",
    "member_left_channel",
    "message.app_home",
    "message.channels",
    "message.groups",
    "message.im",
    "message.mpim",
    "reaction_added",
    "reaction_removed",
    "tokens_revoked",
}
KNOWN_BOT_SCOPES = {
    "app_mentions:read",
    "assistant:write",
    "channels:history",
    "channels:join",
    "channels:read",
    "chat:write",
    "chat:write.customize",
    "chat:write.public",
    "commands",
    "files:read",
    "files:write",
    "groups:history",
    "groups:read",
    "im:history",
    "im:read",
    "im:write",
    "mpim:history",
    "mpim:read",
    "reactions:read",
    "reactions:write",
    "users:read",
    "users:read.email",
}


class _Schema:
    """Collects what Slack's schema would refuse, section by section."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def keys(
        self, where: str, obj: object, allowed: set[str], required: frozenset[str] | set[str] = frozenset()
    ) -> dict[str, Any]:
        if not isinstance(obj, dict):
            self.problems.append(f"{where} is not a mapping")
            return {}
        self.problems.extend(f"{where}.{k} is not a key Slack knows" for k in set(obj) - allowed)
        self.problems.extend(f"{where}.{k} is required" for k in set(required) - set(obj))
        return obj

    def text(self, where: str, value: object, low: int, high: int) -> None:
        if not isinstance(value, str) or not low <= len(value) <= high:
            self.problems.append(f"{where} must be a string of {low}-{high} characters, is {value!r}")

    def url(self, where: str, value: object, high: int) -> None:
        if not isinstance(value, str) or not URL_PATTERN.match(value) or len(value) > high:
            self.problems.append(f"{where} must be an http(s) URL of at most {high} characters: {value!r}")

    def flags(self, where: str, obj: dict[str, Any], names: set[str]) -> None:
        self.problems.extend(
            f"{where}.{k} is not a boolean" for k in names & set(obj) if not isinstance(obj[k], bool)
        )

    def names(self, where: str, values: object, known: set[str], most: int) -> None:
        if not isinstance(values, list) or len(values) > most or len(set(values)) != len(values):
            self.problems.append(f"{where}: a list of at most {most}, no repeats")
            return
        self.problems.extend(f"{where}: unknown {v!r}" for v in values if v not in known or len(v) > 50)

    def manifest(self, manifest: object) -> list[str]:
        top = self.keys("manifest", manifest, TOP_LEVEL_KEYS, {"display_information"})
        meta = self.keys("_metadata", top.get("_metadata", {}), METADATA_KEYS)
        if meta.get("major_version", 1) not in (1, 2):
            self.problems.append("_metadata.major_version must be 1 or 2")
        display = self.keys("display_information", top.get("display_information"), DISPLAY_KEYS, {"name"})
        self.text("display_information.name", display.get("name"), 1, 35)
        if "description" in display:
            self.text("display_information.description", display["description"], 1, 140)
        features = self.keys("features", top.get("features", {}), FEATURE_KEYS)
        if "agent_view" in features and meta.get("major_version", 1) != 2:
            self.problems.append("features.agent_view is declared only by the v2 schema (major_version 2)")
        self.features(features)
        oauth = self.keys("oauth_config", top.get("oauth_config", {}), OAUTH_KEYS)
        scopes = self.keys("oauth_config.scopes", oauth.get("scopes", {}), SCOPE_KEYS)
        self.names("oauth_config.scopes.bot", scopes.get("bot", []), KNOWN_BOT_SCOPES, 255)
        self.settings(self.keys("settings", top.get("settings", {}), SETTINGS_KEYS))
        return self.problems

    def features(self, features: dict[str, Any]) -> None:
        home = self.keys("features.app_home", features.get("app_home", {}), APP_HOME_KEYS)
        self.flags("features.app_home", home, APP_HOME_KEYS)
        bot = self.keys("features.bot_user", features.get("bot_user", {}), BOT_USER_KEYS, {"display_name"})
        self.text("features.bot_user.display_name", bot.get("display_name"), 1, 80)
        self.flags("features.bot_user", bot, {"always_online"})
        agent = self.keys("features.agent_view", features.get("agent_view", {}), AGENT_VIEW_KEYS)
        self.text("features.agent_view.agent_description", agent.get("agent_description", ""), 0, 300)
        prompts = agent.get("suggested_prompts", [])
        if not isinstance(prompts, list) or len(prompts) > 4:
            self.problems.append("features.agent_view.suggested_prompts: at most 4")
        for i, prompt in enumerate(prompts):
            for key, value in self.keys(f"suggested_prompts[{i}]", prompt, PROMPT_KEYS, PROMPT_KEYS).items():
                self.text(f"suggested_prompts[{i}].{key}", value, 1, 10_000)
        shortcuts = features.get("shortcuts", [])
        if not 1 <= len(shortcuts) <= 10:
            self.problems.append("features.shortcuts: 1-10 entries")
        for i, shortcut in enumerate(shortcuts):
            s = self.keys(f"shortcuts[{i}]", shortcut, SHORTCUT_KEYS, SHORTCUT_KEYS)
            self.text(f"shortcuts[{i}].name", s.get("name"), 1, 24)
            self.text(f"shortcuts[{i}].callback_id", s.get("callback_id"), 1, 255)
            self.text(f"shortcuts[{i}].description", s.get("description"), 1, 150)
            if s.get("type") not in ("message", "global"):
                self.problems.append(f"shortcuts[{i}].type must be message or global")
        commands = features.get("slash_commands", [])
        if not 1 <= len(commands) <= 50:
            self.problems.append("features.slash_commands: 1-50 entries")
        for i, command in enumerate(commands):
            self.slash_command(f"slash_commands[{i}]", command)

    def slash_command(self, where: str, command: object) -> None:
        c = self.keys(where, command, COMMAND_KEYS, {"command", "description"})
        self.text(f"{where}.command", c.get("command"), 2, 32)
        if not str(c.get("command", "")).startswith("/"):
            self.problems.append(f"{where}.command must start with /")
        self.text(f"{where}.description", c.get("description"), 1, 2000)
        if "usage_hint" in c:
            self.text(f"{where}.usage_hint", c["usage_hint"], 1, 1000)
        if "url" in c:
            self.url(f"{where}.url", c["url"], 3000)
        self.flags(where, c, {"should_escape"})

    def settings(self, settings: dict[str, Any]) -> None:
        self.flags(
            "settings",
            settings,
            {"org_deploy_enabled", "socket_mode_enabled", "is_hosted", "token_rotation_enabled"},
        )
        events = self.keys(
            "settings.event_subscriptions", settings.get("event_subscriptions", {}), EVENT_SUBSCRIPTION_KEYS
        )
        if "request_url" in events:
            self.url("settings.event_subscriptions.request_url", events["request_url"], 3500)
        self.names(
            "settings.event_subscriptions.bot_events", events.get("bot_events", []), KNOWN_BOT_EVENTS, 100
        )
        interactivity = self.keys(
            "settings.interactivity",
            settings.get("interactivity", {"is_enabled": False}),
            INTERACTIVITY_KEYS,
            {"is_enabled"},
        )
        self.flags("settings.interactivity", interactivity, {"is_enabled"})
        if "request_url" in interactivity:
            self.url("settings.interactivity.request_url", interactivity["request_url"], 3500)


def _problems(manifest: object) -> list[str]:
    """Everything in `manifest` that Slack's schema (or its event and scope lists) would refuse."""
    return _Schema().manifest(manifest)


def _urls(obj: object, path: str = "") -> dict[str, str]:
    """Every URL-valued key in the manifest, by its path."""
    if isinstance(obj, dict):
        found: dict[str, str] = {}
        for key, value in obj.items():
            found.update(_urls(value, f"{path}.{key}"))
            if key in ("url", "request_url") and isinstance(value, str):
                found[f"{path}.{key}"] = value
        return found
    if isinstance(obj, list):
        return {k: v for i, item in enumerate(obj) for k, v in _urls(item, f"{path}[{i}]").items()}
    return {}


def _manifest(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["manifest", *args]) == 0
    out = capsys.readouterr().out
    loaded = json.loads(out) if "json" in args else yaml.safe_load(out)
    assert isinstance(loaded, dict)
    return loaded


def _refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run `slack-tutor manifest ARGS`, expect argparse's refusal (exit 2); return stderr."""
    with pytest.raises(SystemExit) as refused:
        main(["manifest", *args])
    assert refused.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing an operator could paste by mistake
    assert "Traceback" not in captured.err
    return captured.err


# --- The found defects -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Tutor: Math",
        "#tutor",
        "yes",
        "null",
        "1.5",
        "- tutor",
        "tutor # math",
        "Tütor ✨ \"x\" 'y'",
        "@tutor",
    ],
)
def test_any_name_the_operator_gives_round_trips(capsys: pytest.CaptureFixture[str], name: str) -> None:
    manifest = _manifest(capsys, "--url", URL, "--name", name)
    assert manifest["display_information"]["name"] == name
    assert _problems(manifest) == []


def test_socket_mode_manifest_has_no_request_urls(capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest(capsys, "--socket-mode")
    assert _urls(manifest) == {}
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert "message.im" in manifest["settings"]["event_subscriptions"]["bot_events"]
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/tutor"]
    assert _problems(manifest) == []


def test_http_mode_needs_a_url(capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys)
    assert "--url is required" in err
    assert "--socket-mode" in err  # the other way, for a bot Slack can't reach


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://tutor.example.org", "https://"),
        ("tutor.example.org", "https://"),
        ("ftp://tutor.example.org", "https://"),
        ("https://", "host"),
        ("https:///slack", "host"),
        ("https://tutor.example.org/?team=1", "query"),
        ("https://tutor.example.org/#events", "fragment"),
        ("https://user:pw@tutor.example.org", "user"),
        ("https://tutor example.org", "space"),
        ("https://tutor.example.org/" + "a" * 3000, "long"),
    ],
)
def test_request_url_must_be_https_with_a_host(
    capsys: pytest.CaptureFixture[str], url: str, reason: str
) -> None:
    err = _refused(capsys, "--url", url)
    assert "--url" in err
    assert reason in err.lower()


def test_both_url_and_socket_mode_is_a_mistake(capsys: pytest.CaptureFixture[str]) -> None:
    assert "not allowed with" in _refused(capsys, "--url", URL, "--socket-mode")


def test_events_and_scopes_the_code_handles_are_subscribed(capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest(capsys, "--url", URL)
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    scopes = manifest["oauth_config"]["scopes"]["bot"]
    assert "assistant_thread_started" in events  # bot/handlers/surfaces.py
    assert "message.mpim" in events  # group DMs: follow-ups there were lost
    assert "mpim:history" in scopes


# --- Names and lengths -------------------------------------------------------------------------


def test_a_name_longer_than_slack_allows_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert _manifest(capsys, "--url", URL, "--name", "x" * 35)["display_information"]["name"] == "x" * 35
    err = _refused(capsys, "--url", URL, "--name", "Tutor for the math department, room 4")
    assert "35" in err and "37" in err


@pytest.mark.parametrize("name", ["", "   ", "tutor\nmath"])
def test_a_blank_or_multiline_name_is_refused(capsys: pytest.CaptureFixture[str], name: str) -> None:
    assert "--name" in _refused(capsys, "--url", URL, "--name", name)


def test_bot_display_name_follows_slacks_rules(capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest(capsys, "--url", URL, "--bot-name", "Math: tutor")
    assert manifest["features"]["bot_user"]["display_name"] == "Math: tutor"
    assert _manifest(capsys, "--url", URL)["features"]["bot_user"]["display_name"] == "tutor"
    assert "80" in _refused(capsys, "--url", URL, "--bot-name", "t" * 81)
    assert "--bot-name" in _refused(capsys, "--url", URL, "--bot-name", " ")


# --- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://tutor.example.org", EVENTS_URL),
        ("https://tutor.example.org/", EVENTS_URL),
        ("https://tutor.example.org/slack/events", EVENTS_URL),
        (
            "https://TUTOR.example.org:8443/bots/tutor/",
            "https://TUTOR.example.org:8443/bots/tutor/slack/events",
        ),
    ],
)
def test_every_request_url_is_the_events_endpoint(
    capsys: pytest.CaptureFixture[str], given: str, expected: str
) -> None:
    manifest = _manifest(capsys, "--url", given)
    urls = _urls(manifest)
    assert set(urls) == {
        ".features.slash_commands[0].url",
        ".settings.event_subscriptions.request_url",
        ".settings.interactivity.request_url",
    }
    assert set(urls.values()) == {expected}
    assert manifest["settings"]["socket_mode_enabled"] is False
    assert _problems(manifest) == []


# --- Exactly what the code needs ------------------------------------------------------------------

#: Bot scopes each Web API method bot/slack_api.py calls needs (docs.slack.dev/reference/methods).
METHOD_SCOPES: dict[str, set[str]] = {
    "chat_postMessage": {"chat:write"},
    "chat_update": {"chat:write"},
    "chat_delete": {"chat:write"},
    "chat_postEphemeral": {"chat:write"},
    "chat_startStream": {"chat:write"},
    "chat_appendStream": {"chat:write"},
    "chat_stopStream": {"chat:write"},
    "chat_getPermalink": set(),
    "conversations_replies": {"channels:history", "groups:history", "im:history", "mpim:history"},
    "conversations_history": {"channels:history", "groups:history", "im:history", "mpim:history"},
    "files_getUploadURLExternal": {"files:write"},
    "files_completeUploadExternal": {"files:write"},
    "files_info": {"files:read"},  # and downloading url_private
    "reactions_add": {"reactions:write"},
    "reactions_remove": {"reactions:write"},
    "assistant_threads_setStatus": {"chat:write"},  # since 2026-03-05, in channel threads too
    "assistant_threads_setSuggestedPrompts": {"assistant:write"},
    "assistant_threads_setTitle": {"assistant:write"},
    "views_publish": set(),
    "views_open": set(),  # a modal (the thumbs-down form) needs no scope, only a trigger_id
    "users_info": {"users:read"},
    "auth_test": set(),
    "apps_connections_open": set(),  # the app-level token's connections:write, not a bot scope
}
#: Scope each subscribed event needs (docs.slack.dev/reference/events).
EVENT_SCOPES: dict[str, set[str]] = {
    "app_mention": {"app_mentions:read"},
    "message.channels": {"channels:history"},
    "message.groups": {"groups:history"},
    "message.im": {"im:history"},
    "message.mpim": {"mpim:history"},
    "app_home_opened": set(),
    "assistant_thread_started": set(),
    "app_uninstalled": set(),
    "tokens_revoked": set(),
}


def _handled_events() -> set[str]:
    """Events the handlers listen for: the message middleware's, and each `app.event("…")`."""
    source = "\n".join(p.read_text() for p in (ROOT / "bot" / "handlers").glob("*.py"))
    listened = set(re.findall(r'app\.event\("([a-z_.]+)"\)', source))
    # bot/handlers/events.py stores app_mention and message events of every conversation type.
    assert '("app_mention", "message")' in source
    return listened | {"app_mention", "message.channels", "message.groups", "message.im", "message.mpim"}


def _called_methods() -> set[str]:
    source = (ROOT / "bot" / "slack_api.py").read_text()
    return set(re.findall(r"client\.([a-z]+_[A-Za-z_]+)\(", source))


def test_the_manifest_subscribes_to_exactly_the_events_the_handlers_handle(
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = _manifest(capsys, "--url", URL)["settings"]["event_subscriptions"]["bot_events"]
    assert set(events) == _handled_events()


def test_the_manifest_asks_for_exactly_the_scopes_the_code_uses(capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest(capsys, "--url", URL)
    methods = _called_methods()
    assert methods <= set(METHOD_SCOPES), f"add the scopes of {methods - set(METHOD_SCOPES)} to this table"
    needed = set().union(*(METHOD_SCOPES[m] for m in methods))
    needed |= set().union(
        *(EVENT_SCOPES[e] for e in manifest["settings"]["event_subscriptions"]["bot_events"])
    )
    needed |= {"commands"}  # the /tutor command and the Reset tutor here shortcut
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == needed


def test_group_dm_follow_ups_are_treated_like_a_private_channel_thread() -> None:
    """Subscribing to message.mpim is right only if the handler answers there as in channels."""
    root = new_ts()
    body = message("and for x = 4?", channel="G0GROUPDM", channel_type="mpim", thread_ts=root)
    question = parse_question(body, bot_user_id=BOT_USER)
    assert question is not None
    assert (question.thread_key, question.reply_thread_ts, question.is_dm) == (root, root, False)
    top = message(f"<@{BOT_USER}> what is 2 + 2?", channel="G0GROUPDM", channel_type="mpim")
    started = parse_question(top, bot_user_id=BOT_USER)
    assert started is not None and started.is_mention and started.starts_thread
    assert started.thread_key == top["event"]["ts"]


def test_agent_view_and_commands_are_declared(capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest(capsys, "--url", URL)
    assert manifest["_metadata"]["major_version"] == 2
    assert "assistant_view" not in manifest["features"]  # new apps get the agent view only
    assert manifest["features"]["agent_view"]["agent_description"]
    assert [s["callback_id"] for s in manifest["features"]["shortcuts"]] == ["tutor_reset_thread"]
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True


def test_json_format_is_the_same_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    as_yaml = _manifest(capsys, "--url", URL, "--name", "Tutor: Math")
    as_json = _manifest(capsys, "--url", URL, "--name", "Tutor: Math", "--format", "json")
    assert as_json == as_yaml


async def test_the_real_command_prints_a_manifest_slack_accepts(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        CLI, "manifest", "--url", "https://tutor.example.org/", "--name", "Tutor: Math",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    manifest = yaml.safe_load(out)
    assert manifest["display_information"]["name"] == "Tutor: Math"
    assert set(_urls(manifest).values()) == {EVENTS_URL}
    assert _problems(manifest) == []
    refused = await asyncio.create_subprocess_exec(
        CLI, "manifest", cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(refused.communicate(), 60)
    assert (refused.returncode, out) == (2, b"")
    assert b"--url is required" in err


def test_the_schema_checks_catch_what_slack_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    """The checks above can fail: each mistake of a hand-edited manifest is reported."""
    manifest = _manifest(capsys, "--url", URL)
    manifest["_metadata"]["major_version"] = 1
    manifest["display_information"]["name"] = "x" * 36
    manifest["features"]["slash_commands"][0]["url"] = "ftp://tutor.example.org/slack/events"
    manifest["features"]["shortcuts"][0]["name"] = "Reset the tutor in this thread"
    manifest["settings"]["event_subscriptions"]["bot_events"].append("message.mpims")
    manifest["oauth_config"]["scopes"]["bot"].append("mpim:histroy")
    manifest["settings"]["interactivity"].pop("is_enabled")
    manifest["settings"]["sockets_mode_enabled"] = True
    problems = "\n".join(_problems(manifest))
    for expected in (
        "agent_view is declared only by the v2 schema",
        "display_information.name",
        "slash_commands[0].url",
        "shortcuts[0].name",
        "'message.mpims'",
        "'mpim:histroy'",
        "settings.interactivity.is_enabled is required",
        "settings.sockets_mode_enabled is not a key",
    ):
        assert expected in problems
