"""Fields of the wrong shape in signed events and commands: acked, one warning, nothing stored or echoed."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.conftest import Bot
from tests.slack_payloads import CHANNEL, envelope, mention, new_ts, slash_command

GOOD_TS = "1700000000.000100"


def _event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "app_mention",
        "user": "U0ALICE",
        "channel": CHANNEL,
        "text": "<@U0TUTORBOT> What is 2 + 2?",
        "ts": new_ts(),
    }
    event.update(fields)
    return envelope(event)


#: Events whose ids or ts are not strings of Slack's shape.
INVALID = {
    "ts is an object": _event(ts={"a": 1}),
    "ts is a number": _event(ts=1700000000.0001),
    "ts is not a ts": _event(ts="yesterday"),
    "ts with a NUL": _event(ts="1700000000.000100\x00"),
    "ts too long": _event(ts="1" * 30 + ".000100"),
    "thread_ts is an object": _event(thread_ts={"a": 1}),
    "thread_ts is a list": _event(thread_ts=[GOOD_TS]),
    "channel is an object": _event(channel={"id": CHANNEL}),
    "channel is not an id": _event(channel="general"),
    "channel too long": _event(channel="C" + "A" * 40),
    "user is an object": _event(user={"id": "U0ALICE"}),
    "user is not a user id": _event(user="alice"),
    "user with a NUL": _event(user="U0ALICE\x00"),
    "text is an object": _event(text={"a": 1}),
    "subtype is an object": _event(type="message", subtype={"a": 1}),
    "team is an object": {**_event(), "team_id": {"id": "T0001"}},
}


@pytest.mark.parametrize("name", INVALID)
async def test_an_invalid_event_is_acked_with_one_warning_and_not_stored(
    bot: Bot, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.clear()
    status, _ = await bot.send(INVALID[name])
    assert status == 200
    assert "Traceback" not in caplog.text
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert await bot.runs() == []


async def test_text_with_nul_is_stored_without_it(bot: Bot) -> None:
    ts = new_ts()
    assert (await bot.send(mention("What is\x00 2 + 2?", ts=ts)))[0] == 200
    (run,) = await bot.runs()
    assert run.message_ts == ts and run.text == "What is 2 + 2?"


async def test_well_formed_ids_are_still_accepted(bot: Bot) -> None:
    ts = new_ts()
    assert (await bot.send(_event(ts=ts, channel="G0PRIVATE", user="W0ENTERPRISE")))[0] == 200
    (run,) = await bot.runs()
    assert (run.channel_id, run.message_ts, run.user_id) == ("G0PRIVATE", ts, "W0ENTERPRISE")


async def _command(bot: Bot, text: str) -> str:
    status, body = await bot.send_form(slash_command(text, response_url=bot.slack.response_url()))
    assert status == 200
    return str(json.loads(body)["text"]) if body.startswith("{") else body


async def test_unknown_subcommand_quotes_at_most_100_characters(bot: Bot) -> None:
    text = await _command(bot, "x" * 11_000)
    first_line = text.split("\n", 1)[0]
    assert first_line.startswith("unknown command: xxx")
    assert len(first_line) <= len("unknown command: ") + 100
    assert len(text) < 3000


async def test_unknown_profile_quotes_at_most_100_characters(bot: Bot) -> None:
    text = await _command(bot, "profile " + "y" * 5000)
    assert text.startswith("There is no profile called") and len(text) < 400
