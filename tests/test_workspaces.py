"""Distribution mode: workspaces install the app through /slack/install → /slack/oauth_redirect
(Bolt's OAuth flow against the fake's oauth.v2.access), and each is answered with its own token."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from sqlalchemy import func, select, update

from bot.cli import main
from bot.config import load_settings
from bot.doctor import run_checks
from bot.errors import ConfigError
from bot.manifest import BOT_SCOPES
from bot.workspaces import InstalledWorkspaces
from db.migrate import upgrade
from db.models import slack_bots, slack_installations
from tests.conftest import Bot, BotFactory
from tests.fakes import Chart, Turn, wait_for
from tests.slack_payloads import envelope, mention, new_ts

#: Its PostgreSQL databases start migrated (a copy of conftest's template); upgrade finds nothing to do.
pytestmark = pytest.mark.migrated_postgres

TEAM_A, CHANNEL_A = "T0AAA", "C0AAA"
TEAM_B, CHANNEL_B = "T0BBB", "C0BBB"
#: Posts, streams, edits and uploads: every call that shows something in a channel.
SHOWING = (
    "chat.postMessage",
    "chat.startStream",
    "chat.appendStream",
    "chat.stopStream",
    "chat.update",
    "files.getUploadURLExternal",
    "files.completeUploadExternal",
    "assistant.threads.setStatus",
)


async def _distribution_bot(start_bot: BotFactory, **overrides: Any) -> Bot:
    bot = await start_bot(
        slack_bot_token=None,
        slack_client_id="1111.2222",
        slack_client_secret="fake-client-secret",
        **overrides,
    )
    bot.slack.channel_teams.update({CHANNEL_A: TEAM_A, CHANNEL_B: TEAM_B})
    return bot


def _browser(bot: Bot) -> aiohttp.ClientSession:
    """A browser: keeps cookies, and sends Bolt's `Secure` state cookie to http://127.0.0.1 as
    browsers do for loopback (a secure context)."""
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[bot.url])
    return aiohttp.ClientSession(cookie_jar=jar)


async def _install(bot: Bot, team_id: str, *, rotation: bool = False) -> str:
    """An admin of `team_id` installs the app from /slack/install; returns the workspace's token."""
    async with _browser(bot) as browser:
        async with browser.get(f"{bot.url}/slack/install") as response:
            assert response.status == 200
            page = await response.text()
        link = html.unescape(re.search(r'href="(https://slack.com/oauth/v2/authorize[^"]+)"', page)[1])  # type: ignore[index]
        query = parse_qs(urlsplit(link).query)
        assert query["client_id"] == [bot.slack.client_id]
        assert set(query["scope"][0].split(",")) == set(BOT_SCOPES)
        code = bot.slack.authorization_code(team_id, rotation=rotation)
        params = {"code": code, "state": query["state"][0]}
        async with browser.get(f"{bot.url}/slack/oauth_redirect", params=params) as response:
            assert response.status == 200, await response.text()
    token = bot.slack.workspaces[team_id].bot_token
    assert token is not None
    return token


def _in(team_id: str, channel: str, bot: Bot, text: str, *, ts: str | None = None) -> dict[str, Any]:
    """A mention of the tutor in a channel of `team_id`, as Slack delivers it to that installation."""
    bot_user = f"U0BOT{team_id.removeprefix('T')}"
    payload = mention(text, ts=ts, channel=channel)
    payload["team_id"] = team_id
    payload["authorizations"][0].update(team_id=team_id, user_id=bot_user)
    payload["event"].update(team=team_id, text=f"<@{bot_user}> {text}")
    return payload


def _event(team_id: str, event: dict[str, Any]) -> dict[str, Any]:
    payload = envelope(event)
    payload["team_id"] = team_id
    payload["authorizations"][0]["team_id"] = team_id
    return payload


def _tokens_in(bot: Bot, channel: str) -> set[str | None]:
    return {
        call.bearer
        for method in SHOWING
        for call in bot.slack.calls(method)
        if (call.args.get("channel") or call.args.get("channel_id")) in (channel, None)
        and method != "files.getUploadURLExternal"
    }


async def _bots(bot: Bot, team_id: str) -> int:
    async with bot.components.sessions() as session:
        count = await session.scalar(select(func.count()).where(slack_bots.c.team_id == team_id))
    return int(count or 0)


async def test_two_workspaces_are_each_answered_with_their_own_token(start_bot: BotFactory) -> None:
    bot = await _distribution_bot(start_bot)
    token_a = await _install(bot, TEAM_A)
    token_b = await _install(bot, TEAM_B)
    assert token_a != token_b
    async with bot.components.sessions() as session:
        rows = (await session.execute(select(slack_installations))).mappings().all()
    assert {(r["team_id"], r["bot_user_id"], r["bot_id"]) for r in rows} == {
        (TEAM_A, "U0BOT0AAA", "B0BOT0AAA"),
        (TEAM_B, "U0BOT0BBB", "B0BOT0BBB"),
    }

    bot.openai.queue(Turn(text="Here is the plot.", charts=[Chart("plot.png")]), Turn())
    ts_a, ts_b = new_ts(), new_ts()
    assert (await bot.send(_in(TEAM_A, CHANNEL_A, bot, "Plot y = x^2", ts=ts_a)))[0] == 200
    assert (await bot.send(_in(TEAM_B, CHANNEL_B, bot, "Solve 3x + 11 = 14", ts=ts_b)))[0] == 200
    runs = await bot.wait_runs_finished(2, within=20)
    assert [(r.team_id, r.status) for r in runs] == [(TEAM_A, "done"), (TEAM_B, "done")]

    assert bot.slack.messages(CHANNEL_A, ts_a) and bot.slack.messages(CHANNEL_B, ts_b)
    assert len(bot.slack.uploads) == 1 and bot.slack.uploads[0].channel_id == CHANNEL_A
    # The fake refuses a token in another workspace's channel; none was even tried.
    assert _tokens_in(bot, CHANNEL_A) == {token_a}
    assert _tokens_in(bot, CHANNEL_B) == {token_b}
    assert {c.bearer for c in bot.slack.calls("files.getUploadURLExternal")} == {token_a}


async def test_one_workspaces_429_does_not_hold_another_workspaces_answers(start_bot: BotFactory) -> None:
    bot = await _distribution_bot(start_bot)
    await _install(bot, TEAM_A)
    await _install(bot, TEAM_B)
    bot.openai.latency = 0.1
    refusal = {"ok": False, "error": "ratelimited"}
    bot.slack.fail_next("chat.startStream", status=429, body=refusal, headers={"Retry-After": "5"})
    ts_a = new_ts()
    await bot.send(_in(TEAM_A, CHANNEL_A, bot, "Question A", ts=ts_a))
    (refused,) = await wait_for(lambda: bot.slack.calls("chat.startStream"), message="A's refused stream")
    ts_b = new_ts()
    await bot.send(_in(TEAM_B, CHANNEL_B, bot, "Question B", ts=ts_b))
    await bot.wait_runs_finished(2, within=30)

    def new_messages(channel: str) -> list[float]:
        return [
            call.received_at - refused.received_at
            for method in ("chat.startStream", "chat.postMessage")
            for call in bot.slack.calls(method)
            if call.args.get("channel") == channel
        ]

    # Workspace A waited the 5 s its Retry-After asked for; workspace B was not held by it.
    assert min(t for t in new_messages(CHANNEL_A) if t > 0) >= 4.95
    assert max(new_messages(CHANNEL_B)) < 4.0
    assert bot.slack.messages(CHANNEL_A, ts_a) and bot.slack.messages(CHANNEL_B, ts_b)


async def test_a_workspace_that_never_installed_is_acked_and_ignored(
    start_bot: BotFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await _distribution_bot(start_bot)
    await _install(bot, TEAM_A)
    caplog.clear()
    status, _ = await bot.send(_in("T0CCC", "C0CCC", bot, "Solve 3x + 11 = 14"))
    assert status == 200
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == ["ignored a request from workspace T0CCC, which has not installed the app"]
    assert await bot.runs() == []
    assert bot.openai.calls("POST /v1/responses$") == []
    assert not [c for m in SHOWING for c in bot.slack.calls(m)]


async def test_app_uninstalled_removes_the_installation_stops_its_runs_and_deletes_its_data(
    start_bot: BotFactory,
) -> None:
    bot = await _distribution_bot(start_bot)
    await _install(bot, TEAM_A)
    await _install(bot, TEAM_B)
    bot.openai.latency = 30.0  # the answer is still being worked on when the workspace leaves
    assert (await bot.send(_in(TEAM_A, CHANNEL_A, bot, "Solve 3x + 11 = 14")))[0] == 200
    await wait_for(lambda: bot.openai.calls("POST /v1/responses$"), message="no create")

    status, _ = await bot.send(_event(TEAM_A, {"type": "app_uninstalled", "event_ts": new_ts()}))
    assert status == 200
    await wait_for(lambda: _no_bots(bot, TEAM_A), message="installation not deleted")
    bot.slack.uninstall(TEAM_A)  # Slack retires the token as it sends the event
    await wait_for(lambda: bot.components.poller.active_runs == 0, message="the run is still driven")
    # The workspace's data goes too: its question here, its conversation (with its items) at OpenAI.
    assert await bot.runs() == []
    await wait_for(
        lambda: all(c.deleted and not c.items for c in bot.openai.conversations.values()),
        message="conversation (and its items) not deleted at OpenAI",
    )
    before = sum(len(bot.slack.calls(m)) for m in SHOWING)

    assert (await bot.send(_in(TEAM_A, CHANNEL_A, bot, "Are you still there?")))[0] == 200
    assert await bot.runs() == []  # ignored: no run, no create, no Slack call
    assert len(bot.openai.calls("POST /v1/responses$")) == 1
    assert sum(len(bot.slack.calls(m)) for m in SHOWING) == before
    assert await _bots(bot, TEAM_B) == 1  # the other workspace stays installed


async def _no_bots(bot: Bot, team_id: str) -> bool:
    return await _bots(bot, team_id) == 0


async def test_tokens_revoked_for_the_bot_uninstalls_but_user_tokens_alone_do_not(
    start_bot: BotFactory,
) -> None:
    bot = await _distribution_bot(start_bot)
    await _install(bot, TEAM_A)
    users_only = {"type": "tokens_revoked", "tokens": {"oauth": ["U0ALICE"]}, "event_ts": new_ts()}
    assert (await bot.send(_event(TEAM_A, users_only)))[0] == 200
    bots = {"type": "tokens_revoked", "tokens": {"bot": ["U0BOT0AAA"]}, "event_ts": new_ts()}
    assert (await bot.send(_event(TEAM_A, bots)))[0] == 200
    await wait_for(lambda: _no_bots(bot, TEAM_A), message="installation not deleted")


async def test_a_bad_or_missing_state_fails_the_install_without_calling_slack(start_bot: BotFactory) -> None:
    bot = await _distribution_bot(start_bot)
    code = bot.slack.authorization_code(TEAM_A)
    async with _browser(bot) as browser:
        async with browser.get(f"{bot.url}/slack/install") as response:
            assert response.status == 200
        for params in ({"code": code, "state": "forged"}, {"code": code}):
            async with browser.get(f"{bot.url}/slack/oauth_redirect", params=params) as response:
                assert response.status == 400
                assert "fake-client-secret" not in await response.text()
    assert bot.slack.calls("oauth.v2.access") == []
    assert await _bots(bot, TEAM_A) == 0


async def test_an_expiring_rotated_token_is_refreshed_and_the_new_one_used(start_bot: BotFactory) -> None:
    bot = await _distribution_bot(start_bot)
    old = await _install(bot, TEAM_A, rotation=True)
    async with bot.components.sessions() as session:
        (refresh,) = (await session.execute(select(slack_bots.c.bot_refresh_token))).scalars().all()
    assert refresh == bot.slack.workspaces[TEAM_A].refresh_token
    await _expire(bot, TEAM_A)

    ts = new_ts()
    assert (await bot.send(_in(TEAM_A, CHANNEL_A, bot, "Solve 3x + 11 = 14", ts=ts)))[0] == 200
    await bot.wait_runs_finished(1)
    new = bot.slack.workspaces[TEAM_A].bot_token
    assert new != old
    refreshes = bot.slack.calls("oauth.v2.access")[1:]
    assert [c.args.get("grant_type") for c in refreshes] == ["refresh_token"]  # once, on the ack
    assert bot.slack.messages(CHANNEL_A, ts)
    assert _tokens_in(bot, CHANNEL_A) == {new}
    async with bot.components.sessions() as session:
        assert await session.scalar(select(slack_bots.c.bot_token)) == new

    # The worker's own look-up refreshes too (and stores what it got).
    await _expire(bot, TEAM_A)
    workspaces = bot.components.workspaces
    assert isinstance(workspaces, InstalledWorkspaces)
    gateway = await workspaces.gateway(TEAM_A)
    assert gateway.client.token == bot.slack.workspaces[TEAM_A].bot_token != new
    async with bot.components.sessions() as session:
        assert await session.scalar(select(slack_bots.c.bot_token)) == gateway.client.token


async def _expire(bot: Bot, team_id: str) -> None:
    async with bot.components.sessions.begin() as session:
        await session.execute(
            update(slack_bots)
            .where(slack_bots.c.team_id == team_id)
            .values(bot_token_expires_at=(datetime.now(UTC) - timedelta(minutes=1)).replace(tzinfo=None))
        )


async def test_single_workspace_mode_serves_no_install_pages(bot: Bot) -> None:
    for path in ("/slack/install", "/slack/oauth_redirect"):
        async with bot.http.get(f"{bot.url}{path}") as response:
            assert response.status == 404


def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **values: str) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in list(os.environ):
        if name.startswith(("SLACK_", "OPENAI_", "TUTOR_", "DATABASE_")):
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_distribution_mode_names_the_missing_half_of_the_client_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean_env(
        monkeypatch, tmp_path, SLACK_CLIENT_ID="1111.2222", SLACK_SIGNING_SECRET="s", OPENAI_API_KEY="k"
    )
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "SLACK_CLIENT_SECRET" in str(refused.value) and "SLACK_BOT_TOKEN" not in str(refused.value)
    monkeypatch.setenv("SLACK_CLIENT_SECRET", "fake-client-secret")
    settings = load_settings()
    assert settings.distribution and settings.slack_bot_token is None
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-one")  # a bot token wins: single-workspace mode
    assert not load_settings().distribution


def test_the_manifest_gets_the_oauth_redirect_url_with_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifest", "--format", "json", "--url", "https://tutor.example.org/base/"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["oauth_config"]["redirect_urls"] == [
        "https://tutor.example.org/base/slack/oauth_redirect"
    ]
    assert {"app_uninstalled", "tokens_revoked"} <= set(
        manifest["settings"]["event_subscriptions"]["bot_events"]
    )
    assert main(["manifest", "--format", "json", "--socket-mode"]) == 0
    assert "redirect_urls" not in json.loads(capsys.readouterr().out)["oauth_config"]


async def test_doctor_checks_each_installation_without_printing_a_secret(
    start_bot: BotFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    database_url: str,
) -> None:
    bot = await _distribution_bot(start_bot)
    tokens = [await _install(bot, TEAM_A), await _install(bot, TEAM_B)]
    _clean_env(
        monkeypatch,
        tmp_path,
        SLACK_CLIENT_ID=bot.slack.client_id,
        SLACK_CLIENT_SECRET=bot.slack.client_secret,
        SLACK_SIGNING_SECRET="signing-secret",
        SLACK_API_URL=bot.slack.api_url,
        OPENAI_API_KEY=bot.openai.api_key,
        OPENAI_BASE_URL=bot.openai.base_url,
        DATABASE_URL=database_url,
    )
    assert await run_checks() == 0
    out = capsys.readouterr().out
    assert "distribution mode" in out
    assert "2 workspaces installed; auth.test with 2 of their tokens: all accepted" in out
    bot.slack.uninstall(TEAM_B)  # its token stops working
    assert await run_checks() == 1
    out += capsys.readouterr().out
    assert f"refused for {TEAM_B} (auth.test: invalid_auth)" in out
    for secret in (*tokens, bot.slack.client_secret, "signing-secret"):
        assert secret not in out


@pytest.mark.postgres
async def test_installs_rotation_and_uninstall_on_postgres(start_bot: BotFactory, postgres_url: str) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    bot = await _distribution_bot(start_bot, url=postgres_url)
    await _install(bot, TEAM_A, rotation=True)
    token_b = await _install(bot, TEAM_B)
    await _expire(bot, TEAM_A)
    ts_a, ts_b = new_ts(), new_ts()
    await bot.send(_in(TEAM_A, CHANNEL_A, bot, "Solve 3x + 11 = 14", ts=ts_a))
    await bot.send(_in(TEAM_B, CHANNEL_B, bot, "Solve 3x + 11 = 14", ts=ts_b))
    runs = await bot.wait_runs_finished(2, within=20)
    assert {r.status for r in runs} == {"done"}
    assert _tokens_in(bot, CHANNEL_A) == {bot.slack.workspaces[TEAM_A].bot_token}
    assert _tokens_in(bot, CHANNEL_B) == {token_b}
    assert [c.args.get("grant_type") for c in bot.slack.calls("oauth.v2.access")][-1] == "refresh_token"
    await bot.send(_event(TEAM_B, {"type": "app_uninstalled", "event_ts": new_ts()}))
    await wait_for(lambda: _no_bots(bot, TEAM_B), message="installation not deleted")
    assert await _bots(bot, TEAM_A) == 1
