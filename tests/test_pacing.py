"""Slack pacing: posts into one channel are paced as Slack allows, a 429 is honoured by every run
of the process, and a burst of questions in one channel is answered in order, none lost."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from bot.pacing import Pacer
from tests.conftest import BotFactory
from tests.fakes import Turn, wait_for
from tests.slack_payloads import CHANNEL, mention, message, new_ts

THREADS = 5
PER_THREAD = 10  # 50 questions in one channel


class VirtualTime:
    """A clock that moves only when the pacer sleeps: the figures below are exact, however loaded
    the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_turns_in_one_channel_are_paced_and_in_order() -> None:
    time_ = VirtualTime()
    pacer = Pacer(rate=20.0, burst=2, clock=time_.clock, sleep=time_.sleep)
    began = time_.now
    done: list[tuple[int, float]] = []

    async def post(i: int) -> None:
        await pacer.wait_turn("chat.postMessage", "C1")
        done.append((i, time_.now - began))

    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(post(i)))
        await asyncio.sleep(0)  # they queue up in this order
    await asyncio.gather(*tasks)
    assert [i for i, _ in done] == list(range(8))
    # 2 at once (the burst), then one every 1/20 s: the 8th at 6/20 s.
    assert [round(at, 6) for _, at in done] == [0.0, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]

    # Another channel has its own pace; other methods are not paced at all.
    quick = time_.now
    await pacer.wait_turn("chat.postMessage", "C2")
    await pacer.wait_turn("reactions.add", "C1")
    assert time_.now == quick


async def test_a_429_holds_the_method_for_everyone() -> None:
    time_ = VirtualTime()
    pacer = Pacer(clock=time_.clock, sleep=time_.sleep)
    pacer.block("chat.postMessage", 0.3)
    began = time_.now
    await pacer.wait_turn("files.info")  # another method: not held
    assert time_.now == began
    await asyncio.gather(*(pacer.wait_turn("chat.postMessage", f"C{i}") for i in range(3)))
    assert time_.now - began >= 0.3
    # A 429 on one way of posting a new message holds the other too.
    held = time_.now
    pacer.block("chat.postMessage", 0.5)
    await pacer.wait_turn("chat.startStream", "C9")
    assert time_.now - held >= 0.5
    assert pacer.rate_limited == {"chat.postMessage": 2}


async def test_the_pacer_sleeps_on_real_time_by_default() -> None:
    pacer = Pacer()
    pacer.block("chat.postMessage", 0.2)
    began = time.monotonic()
    await pacer.wait_turn("chat.postMessage", "C1")
    assert time.monotonic() - began >= 0.19


def _answer_naming_the_question(request: dict[str, Any]) -> Turn:
    tags = re.findall(r"\[slack message ([0-9.]+)\]", json.dumps(request.get("input")))
    return Turn(text=f"Answer to {tags[-1]}.", code=None)


async def _burst(
    start_bot: BotFactory, *, rate: float, limit: tuple[int, float]
) -> tuple[Any, dict[str, list[str]]]:
    """THREADS threads in one channel, PER_THREAD questions each, sent as fast as Slack would."""
    bot = await start_bot(tutor_slack_channel_rate=rate, tutor_slack_channel_burst=3)
    bot.slack.channel_limit = limit
    bot.openai.script = _answer_naming_the_question
    bot.openai.latency = 0.05
    roots = [new_ts() for _ in range(THREADS)]
    asked: dict[str, list[str]] = {root: [root] for root in roots}
    await asyncio.gather(*(bot.send(mention(f"Question 0 of thread {i}", ts=r)) for i, r in enumerate(roots)))
    for n in range(1, PER_THREAD):
        for i, root in enumerate(roots):
            ts = new_ts()
            asked[root].append(ts)
            await bot.send(message(f"Question {n} of thread {i}", ts=ts, thread_ts=root))
    await bot.wait_runs_finished(THREADS * PER_THREAD, within=60)
    return bot, asked


def _new_messages(slack: Any) -> list[Any]:
    """Calls that each put a new message into a channel: posts and live answers' streams."""
    return [r for r in slack.requests if r.path.endswith(("/chat.postMessage", "/chat.startStream"))]


def _check_answers(bot: Any, asked: dict[str, list[str]]) -> None:
    for root, questions in asked.items():
        answers = [str(m["text"]) for m in bot.slack.messages(CHANNEL, root)]
        # Every question answered once, and in the order asked.
        assert answers == [f"Answer to {ts}." for ts in questions], root


async def test_a_burst_in_one_channel_stays_within_slacks_limit(start_bot: BotFactory) -> None:
    # Slack's ~1 post a second per channel with short bursts, and our pace just inside it, 10× faster.
    bot, asked = await _burst(start_bot, rate=9.0, limit=(4, 10.0))
    _check_answers(bot, asked)
    assert bot.slack.rate_limited == 0, "the pace kept every new message within the channel's limit"
    assert len(_new_messages(bot.slack)) == THREADS * PER_THREAD


async def test_without_pacing_slack_refuses_posts(start_bot: BotFactory) -> None:
    """The fake's limit is real: unpaced, the same burst earns 429s (which are still honoured)."""
    bot = await start_bot()  # the tests' default: no pace
    bot.slack.channel_limit = (4, 10.0)
    bot.openai.latency = 0.05
    roots = [new_ts() for _ in range(20)]
    await asyncio.gather(*(bot.send(mention(f"Question {i}", ts=r)) for i, r in enumerate(roots)))
    await bot.wait_runs_finished(20, within=60)
    assert bot.slack.rate_limited > 0
    assert all(len(bot.slack.messages(CHANNEL, r)) == 1 for r in roots)


async def test_one_runs_429_slows_the_others_to_that_channel(start_bot: BotFactory) -> None:
    bot = await start_bot()
    bot.openai.latency = 0.1
    bot.slack.fail_next(
        "chat.startStream",
        status=429,
        body={"ok": False, "error": "ratelimited"},
        headers={"Retry-After": "1"},
    )
    first = new_ts()
    await bot.send(mention("Question 0", ts=first))
    refused = await wait_for(lambda: _new_messages(bot.slack), message="the refused stream")
    refused_at = refused[0].received_at
    # Five more questions whose answers are ready well within the second Slack asked for.
    roots = [new_ts() for _ in range(5)]
    await asyncio.gather(*(bot.send(mention(f"Question {i}", ts=r)) for i, r in enumerate(roots, 1)))
    await bot.wait_runs_finished(6, within=30)
    later = [p.received_at - refused_at for p in _new_messages(bot.slack)[1:]]
    # Nobody posted during that second: not the refused run, not the others.
    assert len(later) == 6 and min(later) >= 0.95, [round(t, 2) for t in later]
    assert all(len(bot.slack.messages(CHANNEL, r)) == 1 for r in [first, *roots])
    assert bot.components.slack.pacer.rate_limited == {"chat.startStream": 1}
