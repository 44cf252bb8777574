"""The HTTP surface: signatures, url_verification, unhandled events, health."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import Bot, BotFactory
from tests.fakes import wait_for
from tests.slack_payloads import CHANNEL, as_json, envelope, mention, new_ts, signed_headers


async def test_bad_signature_gets_401_and_stores_nothing(bot: Bot) -> None:
    body = as_json(mention("hi"))
    status, _ = await bot.post(body, signed_headers(body, secret="not-the-secret"))
    assert status == 401
    assert await bot.runs() == []


async def test_stale_timestamp_gets_401(bot: Bot) -> None:
    body = as_json(mention("hi"))
    status, _ = await bot.post(body, signed_headers(body, timestamp=int(time.time()) - 600))
    assert status == 401
    assert await bot.runs() == []


async def test_tampered_body_gets_401(bot: Bot) -> None:
    body = as_json(mention("hi"))
    headers = signed_headers(body)
    status, _ = await bot.post(body.replace("hi", "ho"), headers)
    assert status == 401


async def test_url_verification_echoes_the_challenge(bot: Bot) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "t"})
    status, text = await bot.post(body, signed_headers(body))
    assert status == 200
    assert json.loads(text) == {"challenge": "abc123"}


async def test_events_without_a_listener_still_get_200(bot: Bot) -> None:
    for event in (
        {"type": "reaction_added", "user": "U0ALICE", "reaction": "tada", "event_ts": "1.2"},
        {"type": "member_joined_channel", "user": "U0BOB", "channel": "C0MATH", "event_ts": "1.3"},
        {
            "type": "app_home_opened",
            "user": "U0ALICE",
            "channel": "D0DMALICE",
            "tab": "home",
            "event_ts": "1.4",
        },
    ):
        status, _ = await bot.send(envelope(event))
        assert status == 200, event["type"]


async def test_healthz_reports_the_database(bot: Bot) -> None:
    async with bot.http.get(f"{bot.url}/healthz") as response:
        assert response.status == 200
        assert (await response.json())["database"] == "ok"


async def test_healthz_is_503_without_database(start_bot: BotFactory, tmp_path: Path) -> None:
    bot = await start_bot(url=f"sqlite+aiosqlite:///{tmp_path}/missing-dir/none.db")
    async with bot.http.get(f"{bot.url}/healthz") as response:
        assert response.status == 503
        assert (await response.json())["database"] == "unreachable"


async def test_socket_mode_when_app_token_is_set(start_bot: BotFactory) -> None:
    """With SLACK_APP_TOKEN the app connects out over Socket Mode: no signatures, no public URL."""
    bot = await start_bot(slack_app_token="xapp-test-token", slack_signing_secret=None)
    await wait_for(lambda: bot.slack.sockets, message="never connected over Socket Mode")
    # No HTTP endpoint for Slack in Socket Mode; health stays.
    async with bot.http.post(f"{bot.url}/slack/events", data=b"{}") as response:
        assert response.status == 404
    async with bot.http.get(f"{bot.url}/healthz") as response:
        assert response.status == 200

    ts = new_ts()
    await bot.slack.socket_send(
        {
            "envelope_id": "env-1",
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": 0,
            "retry_reason": "",
            "payload": mention("What is 6 * 7?", ts=ts),
        }
    )
    await wait_for(lambda: {"envelope_id": "env-1"} in bot.slack.socket_acks, message="envelope not acked")
    await wait_for(lambda: bot.slack.messages(CHANNEL, ts), message="no answer over Socket Mode")
    assert bot.slack.calls("apps.connections.open")[0].bearer == "xapp-test-token"
