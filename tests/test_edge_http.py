"""The HTTP endpoint under junk, odd fields and outages: never a 500, never a traceback for input.

Unsigned or badly signed requests get 401 and one log line; signed but malformed ones get 200 and
one warning (Slack would only retry them); a question that cannot be stored gets 503 so Slack
retries it; a Slack Web API outage never delays the ack or loses the question.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import Bot, BotFactory
from tests.fakes import FakeSlack, wait_for
from tests.slack_payloads import (
    CHANNEL,
    FORM,
    SIGNING_SECRET,
    as_json,
    block_action,
    envelope,
    file_share,
    mention,
    new_ts,
    signed_headers,
    slash_command,
)

JSON = "application/json"
HOUR = 3600.0


def sign(body: bytes, *, content_type: str = JSON, secret: str = SIGNING_SECRET) -> dict[str, str]:
    """Slack's v0 signature over the raw bytes (signed_headers only takes text)."""
    stamp = str(int(time.time()))
    digest = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": content_type,
    }


async def post(bot: Bot, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with bot.http.post(f"{bot.url}/slack/events", data=body, headers=headers) as response:
        return response.status, await response.text()


def log_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records at WARNING or above, after checking that nothing logged a traceback."""
    assert "Traceback" not in caplog.text
    assert all(r.exc_info is None for r in caplog.records), [r.getMessage() for r in caplog.records]
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


#: Bodies nobody signed (or signed wrongly); each must get 401 and exactly one log line.
JUNK: dict[str, tuple[bytes, str]] = {
    "malformed JSON": (b'{"type": "event_callback", "event": ', JSON),
    "garbage payload": (b"payload=%7Bgarbage", FORM),
    "non-UTF-8 bytes": (b'{"type": "\xff\xfe\xfd"}', JSON),
    "empty body": (b"", JSON),
}


@pytest.mark.parametrize("name", JUNK)
async def test_unsigned_junk_gets_401_and_one_line(
    bot: Bot, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    body, content_type = JUNK[name]
    caplog.clear()
    assert (await post(bot, body, {"Content-Type": content_type}))[0] == 401
    assert len(log_lines(caplog)) == 1

    caplog.clear()
    wrong = sign(body, content_type=content_type, secret="not-the-secret")
    assert (await post(bot, body, wrong))[0] == 401
    assert len(log_lines(caplog)) == 1
    assert await bot.runs() == []


@pytest.mark.parametrize("stamp", ["soon", "", "1e9", "-5", " 17", "9" * 40, "１７００"])
async def test_a_timestamp_that_is_not_a_number_is_simply_invalid(
    bot: Bot, caplog: pytest.LogCaptureFixture, stamp: str
) -> None:
    body = as_json(mention("hi"))
    headers = signed_headers(body)
    headers["X-Slack-Request-Timestamp"] = stamp
    caplog.clear()
    assert (await post(bot, body.encode(), headers))[0] == 401
    assert len(log_lines(caplog)) == 1
    assert await bot.runs() == []


async def test_a_signature_that_is_not_hex_is_invalid(bot: Bot, caplog: pytest.LogCaptureFixture) -> None:
    body = as_json(mention("hi"))
    headers = signed_headers(body)
    headers["X-Slack-Signature"] = "v0=" + "é" * 64
    caplog.clear()
    assert (await post(bot, body.encode(), headers))[0] == 401
    assert len(log_lines(caplog)) == 1


def _odd_envelope(**fields: object) -> bytes:
    body = envelope(
        {"type": "app_mention", "user": "U0ALICE", "channel": CHANNEL, "ts": new_ts(), "text": "hi"}
    )
    body.update(fields)
    return json.dumps(body).encode()


#: Signed bodies Slack would never send; each must get 200 and at most one warning.
SIGNED_ODDITIES: dict[str, tuple[bytes, str]] = {
    **JUNK,
    "JSON that is not an object": (b"[1, 2, 3]", JSON),
    "JSON string": (b'"event_callback"', JSON),
    "payload that is not an object": (b"payload=" + quote('"x"').encode(), FORM),
    "payload of garbage JSON": (b"payload=" + quote('{"type": "block_actions",').encode(), FORM),
    "event: null": (_odd_envelope(event=None), JSON),
    "event is a string": (_odd_envelope(event="app_mention"), JSON),
    "event is a list": (_odd_envelope(event=[{"type": "app_mention"}]), JSON),
    "team is a number": (_odd_envelope(team=5), JSON),
    "authorizations is a string": (_odd_envelope(authorizations="all"), JSON),
    "authorizations is empty": (_odd_envelope(authorizations=[]), JSON),
    "type is an object": (_odd_envelope(type={"a": 1}), JSON),
    "unknown type": (json.dumps({"type": "weird_thing", "team_id": "T0001"}).encode(), JSON),
    "block_actions without actions": (
        b"payload="
        + quote(json.dumps({"type": "block_actions", "actions": [], "team": {"id": "T0001"}})).encode(),
        FORM,
    ),
    "block_actions with actions a string": (
        b"payload="
        + quote(json.dumps({"type": "block_actions", "actions": "x", "user": "U0ALICE"})).encode(),
        FORM,
    ),
    "slash command without command": (b"text=reset&team_id=T0001", FORM),
}
#: Odd envelopes around a well-formed mention: answering that mention is fine too.
MAY_STORE = frozenset({"team is a number", "authorizations is a string", "authorizations is empty"})


@pytest.mark.parametrize("name", SIGNED_ODDITIES)
async def test_signed_but_malformed_gets_200_and_at_most_one_warning(
    bot: Bot, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    body, content_type = SIGNED_ODDITIES[name]
    caplog.clear()
    status, _ = await post(bot, body, sign(body, content_type=content_type))
    assert status == 200
    assert len(log_lines(caplog)) <= 1
    if name not in MAY_STORE:
        assert await bot.runs() == []


async def test_a_mention_whose_file_has_an_odd_size_is_still_answered(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    ts = new_ts()
    payload = file_share(
        "<@U0TUTORBOT> what is 2 + 2?", [{"id": "F0ODD", "name": "x.csv", "size": "big"}], ts=ts
    )
    caplog.clear()
    assert (await bot.send(payload))[0] == 200
    assert len(log_lines(caplog)) <= 1
    assert [run.message_ts for run in await bot.runs()] == [ts]


async def test_a_signed_mention_is_stored_and_acked_fast_while_auth_test_fails(
    start_bot: BotFactory, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack's Web API is failing when the bot starts: the question is still stored before the ack."""
    fake_slack.fail_next("auth.test", status=503, body={"ok": False, "error": "service_unavailable"}, times=4)
    bot = await start_bot()
    await _mention_is_acked_fast_and_stored(bot, caplog)
    # Slack answers again: the identity is resolved in the background and the answer goes out.
    await wait_for(lambda: bot.slack.messages(CHANNEL), timeout=20, message="never answered after the blip")
    await wait_for(lambda: bot.components.identity.user_id == fake_slack.bot_user_id, timeout=20)


async def test_a_signed_mention_is_stored_and_acked_fast_while_auth_test_hangs(
    start_bot: BotFactory, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    fake_slack.delay_next("auth.test", HOUR, times=100)
    bot = await start_bot()
    await _mention_is_acked_fast_and_stored(bot, caplog)


async def _mention_is_acked_fast_and_stored(bot: Bot, caplog: pytest.LogCaptureFixture) -> None:
    ts = new_ts()
    caplog.clear()
    started = time.monotonic()
    status, _ = await bot.send(mention("What is 6 * 7?", ts=ts))
    assert status == 200
    assert time.monotonic() - started < 2.5  # inside Slack's 3 s, whatever auth.test does
    assert [run.message_ts for run in await bot.runs()] == [ts]
    assert "Traceback" not in caplog.text


async def test_a_question_that_cannot_be_stored_gets_503_so_slack_retries(
    start_bot: BotFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The web side alone (`slack-tutor web`): the worker logs its own view of the outage.
    bot = await start_bot(url=f"sqlite+aiosqlite:///{tmp_path}/missing-dir/none.db", with_worker=False)
    caplog.clear()
    status, _ = await bot.send(mention("What is 6 * 7?"))
    assert status == 503
    assert len(log_lines(caplog)) == 1
    async with bot.http.get(f"{bot.url}/healthz") as response:
        assert response.status == 503


async def test_slacks_unsigned_ssl_check_still_gets_its_200(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    assert (await post(bot, b"ssl_check=1&token=legacy", {"Content-Type": FORM}))[0] == 200
    assert log_lines(caplog) == []


async def test_a_command_while_the_database_is_down_gets_one_sentence(
    start_bot: BotFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await start_bot(url=f"sqlite+aiosqlite:///{tmp_path}/missing-dir/none.db", with_worker=False)
    caplog.clear()
    started = time.monotonic()
    status, body = await bot.send_form(slash_command("reset", response_url=bot.slack.response_url()))
    assert status == 200 and time.monotonic() - started < 2.5
    assert "can't reach my database" in body
    assert len(log_lines(caplog)) == 1


async def test_a_button_press_while_the_database_is_down_is_refused_with_one_line(
    start_bot: BotFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await start_bot(url=f"sqlite+aiosqlite:///{tmp_path}/missing-dir/none.db", with_worker=False)
    root, answer = new_ts(), new_ts()
    press = block_action(
        "tutor_start_over",
        f"{CHANNEL}:{root}",
        message_ts=answer,
        thread_ts=root,
        response_url=bot.slack.response_url(),
    )
    caplog.clear()
    status, _ = await bot.send_form(press)
    assert status == 503  # Slack shows the press failed; nothing was reset
    assert len(log_lines(caplog)) == 1
