"""Errors reach the user as one clear sentence; retryable ones are retried; nothing leaks."""

from __future__ import annotations

import logging

import pytest

from bot import errors
from tests.conftest import Bot, BotFactory
from tests.fakes import Turn, wait_for
from tests.slack_payloads import CHANNEL, mention, new_ts

QUOTA_BODY = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
        "param": None,
    }
}


async def _only_reply(bot: Bot, ts: str) -> str:
    posts = await wait_for(lambda: bot.slack.messages(CHANNEL, ts), message="no message in the thread")
    await bot.wait_runs_finished(1)
    assert len(bot.slack.messages(CHANNEL, ts)) == 1
    return str(posts[0]["text"])


async def test_quota_exhausted_is_one_clear_sentence(bot: Bot, caplog: pytest.LogCaptureFixture) -> None:
    bot.openai.fail_next("POST /v1/responses$", status=429, body=QUOTA_BODY)
    ts = new_ts()
    with caplog.at_level(logging.DEBUG):
        await bot.send(mention("Solve x^2 = 4", ts=ts))
        text = await _only_reply(bot, ts)
    assert text == errors.QuotaExhausted.user_message
    (post,) = bot.slack.messages(CHANNEL, ts)
    assert post["blocks"][-1]["elements"][0]["action_id"] == "tutor_start_over"
    # Billing errors are not retried: exactly one create reached OpenAI.
    assert len(bot.openai.calls("POST /v1/responses$")) == 1
    (run,) = await bot.runs()
    assert run.status == "failed" and run.error_code == "quota_exhausted"
    # No secret in any log line.
    for secret in (bot.openai.api_key, bot.slack.bot_token, "test-signing-secret"):
        assert secret not in caplog.text
        assert secret not in text

    # The process keeps serving: the next question is answered.
    other = new_ts()
    await bot.send(mention("And now?", ts=other))
    await wait_for(lambda: bot.slack.messages(CHANNEL, other))
    assert "3x = 3" in bot.slack.messages(CHANNEL, other)[0]["text"]


async def test_rate_limit_on_create_is_retried_after_retry_after(bot: Bot) -> None:
    bot.openai.fail_next(
        "POST /v1/responses$",
        status=429,
        body={"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
        headers={"Retry-After": "0.3"},
    )
    ts = new_ts()
    await bot.send(mention("What is 1 + 1?", ts=ts))
    text = await _only_reply(bot, ts)
    assert "3x = 3" in text  # the real answer, after the retry
    creates = bot.openai.calls("POST /v1/responses$")
    assert len(creates) == 2
    assert (creates[1].received_at - creates[0].received_at) >= 0.3


async def test_failed_model_run_is_one_clear_sentence(bot: Bot) -> None:
    bot.openai.queue(Turn(status="failed", error={"code": "server_error", "message": "boom"}))
    ts = new_ts()
    await bot.send(mention("Integrate x", ts=ts))
    assert await _only_reply(bot, ts) == errors.ModelFailed.user_message


async def test_openai_outage_is_retried_then_told(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_max_attempts=2)
    for _ in range(10):
        bot.openai.fail_next(
            "GET /v1/containers", status=503, body={"error": {"message": "down", "type": "server_error"}}
        )
        bot.openai.fail_next(
            "POST /v1/conversations", status=503, body={"error": {"message": "down", "type": "server_error"}}
        )
    ts = new_ts()
    await bot.send(mention("Are you there?", ts=ts))
    text = await _only_reply(bot, ts)
    assert text == errors.OpenAIUnavailable.user_message


async def test_run_that_takes_too_long_is_cancelled_and_told(start_bot: BotFactory) -> None:
    # Long enough for the create to land even on a loaded machine (0.3 s timed out mid-create
    # under CI load: nothing to cancel then), short against the model's 30 s.
    bot = await start_bot(tutor_run_timeout=2.0)
    bot.openai.latency = 30.0
    ts = new_ts()
    await bot.send(mention("Compute a very long thing", ts=ts))
    assert await _only_reply(bot, ts) == errors.RunTimedOut.user_message
    assert len(bot.openai.calls("POST /v1/responses/")) >= 1  # the cancel
    assert any(c.path.endswith("/cancel") for c in bot.openai.calls("POST /v1/responses/"))


async def test_answer_cut_off_says_so(bot: Bot) -> None:
    bot.openai.queue(
        Turn(
            text="The first half of a long answer", status="incomplete", incomplete_reason="max_output_tokens"
        )
    )
    ts = new_ts()
    await bot.send(mention("Explain everything", ts=ts))
    text = await _only_reply(bot, ts)
    assert text.startswith("The first half of a long answer")
    assert "cut off" in text


async def test_long_answer_is_split_not_truncated(bot: Bot) -> None:
    paragraphs = [f"Step {i}: " + "we simplify the expression once more. " * 12 for i in range(40)]
    bot.openai.queue(Turn(text="\n\n".join(paragraphs), code=None))
    ts = new_ts()
    await bot.send(mention("Show all the steps", ts=ts))
    await bot.wait_runs_finished(1)
    posts = bot.slack.messages(CHANNEL, ts)
    assert len(posts) >= 5
    assert all(len(p["text"]) <= 3000 for p in posts)
    joined = "\n\n".join(p["text"] for p in posts)
    for i in range(40):
        assert f"Step {i}:" in joined
