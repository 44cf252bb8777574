"""Buttons act where they were pressed (Slack's `container`), never where their `value` points."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.conftest import Bot
from tests.fakes import wait_for
from tests.slack_payloads import CHANNEL, DM, block_action, dm, file_share, form, mention, new_ts
from tests.test_files import THREE_CHARTS, _csv

OTHER = "C0OTHER"


async def _ask(bot: Bot, text: str, *, channel: str = CHANNEL) -> tuple[str, dict[str, Any]]:
    """A question answered in its thread: (thread root ts, the answer message)."""
    ts = new_ts()
    runs = len(await bot.runs())
    await bot.send(mention(text, ts=ts, channel=channel))
    await bot.wait_runs_finished(runs + 1)
    (answer,) = bot.slack.messages(channel, ts)
    return ts, answer


def _value(message: dict[str, Any]) -> str:
    return str(message["blocks"][-1]["elements"][0]["value"])


def _press(
    bot: Bot, action_id: str, value: str, *, channel: str, message_ts: str, thread_ts: str | None
) -> str:
    body = block_action(
        action_id,
        value,
        message_ts=message_ts,
        thread_ts=thread_ts or "",
        response_url=bot.slack.response_url("press"),
        channel=channel,
    )
    if thread_ts is None:  # a top-level message: Slack sends no thread_ts at all
        payload = json.loads(parse_qs(body)["payload"][0])
        del payload["container"]["thread_ts"], payload["message"]["thread_ts"]
        body = form(payload=json.dumps(payload))
    return body


async def _resets(bot: Bot) -> list[tuple[str, str | None]]:
    return [(r.channel_id, r.reply_thread_ts) for r in await bot.runs() if r.kind == "reset"]


async def test_start_over_pressed_elsewhere_ignores_a_value_naming_another_thread(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    math, math_answer = await _ask(bot, "What is 5 * 5?")
    other, other_answer = await _ask(bot, "What is 6 * 6?", channel=OTHER)
    forged = _value(math_answer)
    assert forged == f"{CHANNEL}:{math}"

    caplog.clear()
    press = _press(
        bot, "tutor_start_over", forged, channel=OTHER, message_ts=other_answer["ts"], thread_ts=other
    )
    assert (await bot.send_form(press))[0] == 200
    # The thread it was pressed in is reset, the one its value names is not.
    assert await _resets(bot) == [(OTHER, other)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "another thread" in warnings[0]
    await bot.wait_runs_finished(3)
    assert not [m for m in bot.slack.messages(CHANNEL, math) if m["text"].startswith("Starting over")]


async def test_start_over_in_a_dm_top_level_resets_the_dm_conversation(bot: Bot) -> None:
    ts = new_ts()
    await bot.send(dm("What is 7 * 7?", ts=ts))
    await bot.wait_runs_finished(1)
    (answer,) = [m for m in bot.slack.all_messages(DM) if m.get("user") == bot.slack.bot_user_id]
    assert "thread_ts" not in answer  # the DM's top level is one conversation
    assert _value(answer) == f"{DM}:"
    press = _press(
        bot, "tutor_start_over", _value(answer), channel=DM, message_ts=answer["ts"], thread_ts=None
    )
    assert (await bot.send_form(press))[0] == 200
    assert await _resets(bot) == [(DM, None)]


async def test_start_over_without_a_value_uses_the_container(bot: Bot) -> None:
    ts, answer = await _ask(bot, "What is 8 * 8?")
    press = _press(bot, "tutor_start_over", "", channel=CHANNEL, message_ts=answer["ts"], thread_ts=ts)
    assert (await bot.send_form(press))[0] == 200
    assert await _resets(bot) == [(CHANNEL, ts)]


async def test_analyse_it_pressed_elsewhere_does_not_start_the_offered_analysis(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    ts = new_ts()
    await bot.send(file_share("here's the data", [_csv(bot)], ts=ts))
    (offer,) = await wait_for(lambda: bot.slack.messages(CHANNEL, ts), message="no offer")
    forged = _value(offer)
    assert forged == f"{CHANNEL}:{ts}"
    _, elsewhere = await _ask(bot, "What is 9 * 9?", channel=OTHER)

    caplog.clear()
    press = _press(
        bot,
        "tutor_analyse",
        forged,
        channel=OTHER,
        message_ts=elsewhere["ts"],
        thread_ts=elsewhere["thread_ts"],
    )
    assert (await bot.send_form(press))[0] == 200
    # Nothing started in the offered thread (what a press in C0OTHER's own thread does is the tutor's).
    assert [(r.channel_id, r.kind) for r in await bot.runs() if r.channel_id == CHANNEL] == [
        (CHANNEL, "offer")
    ]
    assert bot.slack.uploads == []
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("bot.handlers")]
    assert len(warnings) == 1 and "another thread" in warnings[0]

    # Pressed where it was offered, the same button starts the analysis.
    bot.openai.queue(THREE_CHARTS)
    press = _press(bot, "tutor_analyse", forged, channel=CHANNEL, message_ts=offer["ts"], thread_ts=ts)
    assert (await bot.send_form(press))[0] == 200
    await wait_for(
        lambda: len([u for u in bot.slack.uploads if u.channel_id == CHANNEL]) == 3,
        message="the analysis never ran",
    )


async def test_analyse_it_pressed_in_an_answered_thread_starts_no_empty_run(bot: Bot) -> None:
    """A forged "Analyse it" in a thread with nothing offered: nothing to analyse, so nothing runs."""
    math, answer = await _ask(bot, "What is 7 * 7?")
    body = _press(
        bot, "tutor_analyse", f"{CHANNEL}:{math}", channel=CHANNEL, message_ts=answer["ts"], thread_ts=math
    )
    status, _ = await bot.send_form(body)
    assert status == 200
    runs = await bot.runs()
    assert len(runs) == 1  # only the question itself
    assert len(bot.slack.messages(CHANNEL, math)) == 1
