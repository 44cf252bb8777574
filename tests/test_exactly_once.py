"""Exactly one reply per question across lost responses, killed workers and restarts."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.conftest import BotFactory, process_env
from tests.fakes import Chart, FakeOpenAI, FakeSlack, Turn, wait_for
from tests.prefork import ProcessLike, Zygote
from tests.slack_payloads import CHANNEL, mention, new_ts

#: Its PostgreSQL databases start migrated (a copy of conftest's template); upgrade finds nothing to do.
pytestmark = pytest.mark.migrated_postgres

INTERNAL_ERROR = {"ok": False, "error": "internal_error"}


@pytest_asyncio.fixture
async def spawn_worker(
    database_url: str, fake_slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, zygote: Zygote
) -> AsyncIterator[Any]:
    """Start `python -m bot worker` as a real process (tests/prefork.py) against the fakes and the
    test database."""
    processes: list[ProcessLike] = []

    async def spawn(**extra_env: str) -> ProcessLike:
        env = process_env(
            fake_slack,
            fake_openai,
            DATABASE_URL=database_url,
            TUTOR_POLL_INTERVAL="0.05",
            TUTOR_LEASE_SECONDS="1",
            **extra_env,
        )
        process = await zygote.start(["worker"], env=env, cwd=tmp_path, stdout=None, stderr=None)
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_post_whose_success_was_lost_is_not_posted_again(start_bot: BotFactory) -> None:
    bot = await start_bot()
    bot.slack.refuse_streams = "channel_type_not_supported"  # the answer is posted, then edited
    # Slack posts the message but the answer is a 500: the bot can't know it landed.
    bot.slack.fail_next("chat.postMessage", status=500, body=INTERNAL_ERROR, after_handling=True)
    ts = new_ts()
    await bot.send(mention("What is 3 + 4?", ts=ts))
    await bot.wait_runs_finished(1)
    assert len(bot.slack.calls("chat.postMessage")) == 1
    assert len(bot.slack.messages(CHANNEL, ts)) == 1
    # The retry looked for its own tagged message before posting again.
    replies = bot.slack.calls("conversations.replies")
    assert replies and replies[-1].args["include_all_metadata"] in ("1", "true", True)
    (run,) = await bot.runs()
    assert run.status == "done"


async def test_worker_killed_between_create_and_reply_answers_once(
    start_bot: BotFactory, spawn_worker: Any
) -> None:
    web = await start_bot(with_worker=False)
    web.openai.latency = 1.5
    web.openai.queue(Turn(text="x = 1", charts=[Chart("solution.png")]))
    worker = await spawn_worker()
    ts = new_ts()
    await web.send(mention("I need to solve the equation 3x + 11 = 14. Can you help me?", ts=ts))

    async def has_response() -> bool:
        runs = await web.runs()
        return bool(runs and runs[0].response_id)

    await wait_for(has_response, timeout=15, message="worker never created the response")
    worker.send_signal(signal.SIGKILL)
    await worker.wait()
    assert web.slack.messages(CHANNEL, ts) == []

    await start_bot(with_worker=True)  # a new worker on the same database
    await wait_for(lambda: web.slack.messages(CHANNEL, ts), timeout=15, message="no reply after restart")
    await web.wait_runs_finished(1)
    assert len(web.openai.calls("POST /v1/responses$")) == 1  # resumed from the stored response id
    assert len(web.slack.messages(CHANNEL, ts)) == 1
    assert len(web.slack.uploads) == 1


async def test_worker_killed_after_posting_before_recording_answers_once(
    start_bot: BotFactory, spawn_worker: Any
) -> None:
    web = await start_bot(with_worker=False)
    web.slack.refuse_streams = "channel_type_not_supported"  # the answer is posted, then edited
    # The post reaches Slack, but Slack's answer is slow: the worker dies waiting for it.
    web.slack.delay_next("chat.postMessage", 1.0)
    worker = await spawn_worker()
    ts = new_ts()
    await web.send(mention("What is 12 / 4?", ts=ts))
    await wait_for(lambda: web.slack.calls("chat.postMessage"), timeout=15, message="worker never posted")
    worker.send_signal(signal.SIGKILL)
    await worker.wait()
    await wait_for(lambda: web.slack.messages(CHANNEL, ts, live=True), message="the slow post never landed")
    (run,) = await web.runs()
    assert run.status == "replying" and run.lease_owner is not None  # still leased by the dead worker

    await start_bot(with_worker=True)
    await web.wait_runs_finished(1, within=15)
    assert len(web.slack.messages(CHANNEL, ts, live=True)) == 1
    assert "3x = 3" in web.slack.messages(CHANNEL, ts)[0]["text"]
    assert len(web.slack.calls("chat.postMessage")) == 1
    assert len(web.openai.calls("POST /v1/responses$")) == 1


async def test_ambiguous_create_is_reconciled_not_repeated(start_bot: BotFactory) -> None:
    bot = await start_bot()
    # OpenAI accepts the create but the answer is lost (a 500 after handling).
    bot.openai.fail_next(
        "POST /v1/responses$",
        status=500,
        body={"error": {"message": "upstream", "type": "server_error", "code": None}},
        after_handling=True,
    )
    ts = new_ts()
    await bot.send(mention("What is 9 - 2?", ts=ts))

    async def complete_orphans() -> bool:
        for response_id, state in bot.openai.responses.items():
            if not state.terminal:
                bot.openai.complete(response_id)
        return bool(bot.slack.messages(CHANNEL, ts))

    await wait_for(complete_orphans, timeout=20, message="the reconciled answer was never posted")
    await bot.wait_runs_finished(1)
    assert len(bot.openai.calls("POST /v1/responses$")) == 1
    assert len(bot.slack.messages(CHANNEL, ts)) == 1
    assert "3x = 3" in bot.slack.messages(CHANNEL, ts)[0]["text"]


@pytest.mark.postgres
async def test_two_workers_on_postgres_answer_each_question_once(
    start_bot: BotFactory, postgres_url: str
) -> None:
    from db.migrate import upgrade

    await asyncio.to_thread(upgrade, postgres_url)
    first = await start_bot(url=postgres_url)
    await start_bot(url=postgres_url)  # a second process-like worker on the same database
    first.openai.latency = 0.1
    roots = [new_ts() for _ in range(12)]
    await asyncio.gather(*(first.send(mention(f"Question {i}", ts=ts)) for i, ts in enumerate(roots)))
    await first.wait_runs_finished(12, within=30)
    assert len(first.openai.calls("POST /v1/responses$")) == 12
    for ts in roots:
        assert len(first.slack.messages(CHANNEL, ts)) == 1
