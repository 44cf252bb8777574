"""No single hung call, ambiguous create or outage stalls other users or leaves a question unanswered."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import text

from bot import errors
from tests.conftest import Bot, BotFactory
from tests.fakes import wait_for
from tests.slack_payloads import CHANNEL, mention, new_ts

OTHER = "C0OTHER"
SERVER_ERROR = {"error": {"message": "The server had an error", "type": "server_error", "code": None}}
SLACK_DOWN = {"ok": False, "error": "internal_error"}
HOUR = 3600.0
#: What a user reads while the tutor keeps retrying.
SLOW_NOTICE = "OpenAI is slow to answer, still trying…"


def _texts(bot: Bot, channel: str, ts: str) -> list[str]:
    return [str(m["text"]) for m in bot.slack.messages(channel, ts)]


async def test_a_hung_retrieve_delays_no_other_question_and_its_user_is_told(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_run_timeout=4.0, tutor_openai_timeout=0.5)
    bot.openai.latency = 30.0  # still thinking when the run gives up
    first = new_ts()
    await bot.send(mention("A question whose run hangs", ts=first))
    response_id = await wait_for(lambda: next(iter(bot.openai.responses), None))
    # From now on every retrieve of that response hangs.
    bot.openai.delay_next(f"GET /v1/responses/{response_id}", HOUR, times=1000)
    bot.openai.latency = 0.5  # the other question's model is quick

    second = new_ts()
    asked = time.monotonic()
    await bot.send(mention("What is 2 + 2?", ts=second, channel=OTHER))
    await wait_for(lambda: _texts(bot, OTHER, second), timeout=6.0, message="the other channel's answer")
    assert time.monotonic() - asked < 4.0
    assert "3x = 3" in _texts(bot, OTHER, second)[0]

    # The first user gets one sentence once the run's time is up.
    told = await wait_for(lambda: _texts(bot, CHANNEL, first), timeout=10.0)
    assert told[-1] == errors.RunTimedOut.user_message


async def test_one_5xx_on_create_is_reconciled_within_seconds(start_bot: BotFactory) -> None:
    bot = await start_bot()
    bot.openai.fail_next("POST /v1/responses$", status=500, body=SERVER_ERROR)
    ts = new_ts()
    asked = time.monotonic()
    await bot.send(mention("Solve 3x + 11 = 14", ts=ts))
    await wait_for(lambda: _texts(bot, CHANNEL, ts), timeout=8.0, message="an answer after one 5xx")
    assert time.monotonic() - asked < 8.0
    (answer,) = _texts(bot, CHANNEL, ts)
    assert "3x = 3" in answer
    # The first create left no trace, so it was sent once more: two creates, one response.
    assert len(bot.openai.calls("POST /v1/responses$")) == 2
    assert len(bot.openai.responses) == 1


async def test_a_create_that_landed_despite_a_5xx_is_answered_once(start_bot: BotFactory) -> None:
    bot = await start_bot()
    bot.openai.latency = HOUR  # only complete() finishes it: nobody knows its id
    bot.openai.fail_next("POST /v1/responses$", status=502, body=SERVER_ERROR, after_handling=True)
    ts = new_ts()
    await bot.send(mention("Solve 3x + 11 = 14", ts=ts))
    (response_id,) = await wait_for(lambda: list(bot.openai.responses))
    # The re-create finds the conversation busy with the first response, so it keeps looking.
    await wait_for(lambda: len(bot.openai.calls("POST /v1/responses$")) >= 2, timeout=8.0)
    bot.openai.complete(response_id)
    await wait_for(lambda: _texts(bot, CHANNEL, ts), timeout=8.0, message="the orphan's answer")
    await bot.wait_runs_finished(1)
    (answer,) = _texts(bot, CHANNEL, ts)
    assert "3x = 3" in answer
    assert len(bot.openai.responses) == 1


async def test_creates_that_always_hang_are_told_to_the_user_in_time(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_openai_timeout=0.3, tutor_run_timeout=6.0, tutor_slow_notice=1.5)
    bot.openai.delay_next("POST /v1/responses$", HOUR, times=1000)
    ts = new_ts()
    asked = time.monotonic()
    await bot.send(mention("Are you there?", ts=ts))
    slow = await wait_for(lambda: _texts(bot, CHANNEL, ts), timeout=5.0, message="a still-trying notice")
    assert slow == [SLOW_NOTICE]
    final = await wait_for(lambda: len(_texts(bot, CHANNEL, ts)) > 1, timeout=8.0, message="a final sentence")
    assert final
    texts = _texts(bot, CHANNEL, ts)
    assert len(texts) == 2
    assert texts[1] in (errors.RunTimedOut.user_message, errors.AmbiguousCreate.user_message)
    assert time.monotonic() - asked < 10.0
    (run,) = await bot.wait_runs_finished(1)
    assert run.status == "failed"


async def test_a_slack_outage_longer_than_the_old_backoff_still_delivers(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_retry_backoff_cap=0.1, tutor_delivery_deadline=60.0)
    bot.slack.fail_next("chat.postMessage", status=500, body=SLACK_DOWN, times=12)
    ts = new_ts()
    await bot.send(mention("What is 6 * 7?", ts=ts))
    await wait_for(lambda: _texts(bot, CHANNEL, ts), timeout=15.0, message="the answer after the outage")
    (run,) = await bot.wait_runs_finished(1)
    assert run.status == "done"
    assert len(_texts(bot, CHANNEL, ts)) == 1


async def test_a_permanent_slack_error_gives_up_at_once(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_retry_backoff_cap=0.1)
    bot.slack.fail_next(
        "chat.postMessage", status=200, body={"ok": False, "error": "channel_not_found"}, times=100
    )
    await bot.send(mention("Anyone?"))
    (run,) = await bot.wait_runs_finished(1)
    assert run.status == "failed" and run.error_code == "slack_delivery_failed"
    assert len(bot.slack.calls("chat.postMessage")) == 1


async def test_a_whitespace_only_mention_gets_a_prompt(bot: Bot) -> None:
    ts = new_ts()
    await bot.send(mention("   \n ", ts=ts))
    (prompt,) = await wait_for(lambda: _texts(bot, CHANNEL, ts), message="a prompt for a question")
    assert prompt == errors.EmptyQuestion.user_message
    assert not bot.openai.calls("POST /v1/responses$")


async def test_an_unexpected_database_error_is_not_blamed_on_openai(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_max_attempts=2, tutor_retry_backoff_cap=0.1)
    async with bot.components.engine.begin() as connection:
        await connection.execute(text("DROP TABLE channel_settings"))
    ts = new_ts()
    await bot.send(mention("What is 1 + 1?", ts=ts))
    (told,) = await wait_for(lambda: _texts(bot, CHANNEL, ts), timeout=8.0)
    assert told == errors.InternalError.user_message
    (run,) = await bot.wait_runs_finished(1)
    assert run.error_code == "internal_error"


async def test_many_slow_runs_are_driven_at_once(start_bot: BotFactory) -> None:
    """A run occupies a slot, never the loop: ten slow answers take about one answer's time."""
    bot = await start_bot()
    bot.openai.latency = 1.0
    asked = time.monotonic()
    threads = [new_ts() for _ in range(10)]
    await asyncio.gather(*(bot.send(mention(f"Question {i}", ts=ts)) for i, ts in enumerate(threads)))
    await bot.wait_runs_finished(10, within=10.0)
    assert all(_texts(bot, CHANNEL, ts) for ts in threads)
    assert time.monotonic() - asked < 6.0


async def test_a_poller_woken_as_it_is_stopped_still_stops(start_bot: BotFactory) -> None:
    """Cancelling the poller the moment it is woken ends it (Python 3.11's wait_for swallowed that)."""
    bot = await start_bot(with_worker=False)
    poller = bot.components.poller
    for attempt in range(20):
        task = asyncio.create_task(poller.run_forever())
        # Let it start and idle (the stimulus, not a wait for a result), then wake and stop it at once.
        await asyncio.sleep(0.05 + 0.003 * attempt)
        poller.wake()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=10.0)
        assert done, "the run-poller ignored its cancellation"
