"""Production shape on PostgreSQL: `web` + 2 `worker` processes, exactly once under load and kills.

Real processes against the fake Slack and OpenAI; each worker is killed with SIGKILL at the
moment that matters (its pid is read from the run's lease).
"""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from db.migrate import upgrade
from tests.fakes import Chart, FakeOpenAI, FakeSlack, Turn, wait_for
from tests.slack_payloads import CHANNEL, as_json, mention, message, new_ts
from tests.test_pacing import _answer_naming_the_question, _new_messages
from tests.test_rescue import (  # noqa: F401  (processes is a fixture)
    BotProcess,
    Processes,
    RunsTable,
    lease_pid,
    processes,
    start_worker,
)

#: Their databases start migrated (a copy of conftest's template); their own upgrade finds nothing to do.
pytestmark = [pytest.mark.postgres, pytest.mark.migrated_postgres]

FAST = {"TUTOR_POLL_INTERVAL": "0.2"}


async def _production(processes: Processes, url: str) -> tuple[BotProcess, list[BotProcess]]:  # noqa: F811
    await asyncio.to_thread(upgrade, url)
    web = await processes.start_web("web", url)
    workers = list(await asyncio.gather(*(start_worker(processes, url, **FAST) for _ in range(2))))
    return web, workers


async def _holder(runs: RunsTable, ts: str, workers: list[BotProcess]) -> tuple[BotProcess, BotProcess]:
    """The worker holding the run of question `ts`, and the other one."""
    owner = (await runs.of(ts)).lease_owner
    (holder,) = [w for w in workers if w.pid == lease_pid(owner)]
    (other,) = [w for w in workers if w is not holder]
    return holder, other


async def test_200_questions_at_two_web_processes_answered_once_each_in_order(
    processes: Processes,  # noqa: F811
    postgres_url: str,
    fake_slack: FakeSlack,
    fake_openai: FakeOpenAI,
) -> None:
    """Each question also reaches a second web process at the same moment, as Slack's retry."""
    web, _workers = await _production(processes, postgres_url)
    other_web = await processes.start_web("web", postgres_url)
    fake_openai.script = _answer_naming_the_question
    fake_openai.latency = 0.05
    asked: dict[tuple[str, str], list[str]] = {}

    async def both(body: str) -> None:
        statuses = await asyncio.gather(
            processes.send(web, body), processes.send(other_web, body, retry_num=1)
        )
        assert statuses == [200, 200]

    async def thread(i: int) -> None:
        channel, root = f"C{i:05d}", new_ts()
        asked[(channel, root)] = [root]
        await both(as_json(mention(f"Q1 of {i}", ts=root, channel=channel)))
        for n in range(2, 6):
            ts = new_ts()
            asked[(channel, root)].append(ts)
            await both(as_json(message(f"Q{n} of {i}", ts=ts, thread_ts=root, channel=channel)))

    await asyncio.gather(*(thread(i) for i in range(40)))
    runs = RunsTable(postgres_url)
    try:
        assert len(await runs.rows()) == 200  # one run per question, whichever process stored it
        await runs.wait_finished(200, within=90)
    finally:
        await runs.dispose()
    for (channel, root), questions in asked.items():
        answers = [str(m["text"]) for m in fake_slack.messages(channel, root)]
        assert answers == [f"Answer to {ts}." for ts in questions], (channel, root)
    assert len(_new_messages(fake_slack)) == 200
    assert len(fake_openai.calls("POST /v1/responses$")) == 200


async def test_workers_killed_after_a_post_and_mid_upload_deliver_each_once(
    processes: Processes,  # noqa: F811
    postgres_url: str,
    fake_slack: FakeSlack,
    fake_openai: FakeOpenAI,
) -> None:
    web, workers = await _production(processes, postgres_url)
    fake_openai.latency = 0.1
    runs = RunsTable(postgres_url)
    try:
        # 1. Slack starts the answer's message but answers late: the worker dies before it can record it.
        fake_slack.delay_next("chat.startStream", 2.0)
        posted = new_ts()
        assert await processes.send(web, as_json(mention("What is 7 + 8?", ts=posted))) == 200
        await wait_for(lambda: fake_slack.calls("chat.startStream"), timeout=20, message="the post")
        holder, survivor = await _holder(runs, posted, workers)
        await holder.kill()
        await runs.wait_finished(1, within=30)
        assert len(fake_slack.messages(CHANNEL, posted)) == 1

        # 2. The second chart's bytes are on their way when the worker holding the run dies.
        workers = [survivor, await start_worker(processes, postgres_url, **FAST)]
        fake_openai.queue(Turn(text="Two charts.", charts=[Chart("first.png"), Chart("second.png")]))
        fake_slack.delay_next("/upload/v1/", 0.0)
        fake_slack.delay_next("/upload/v1/", 3.0)
        plotted = new_ts()
        assert await processes.send(web, as_json(mention("Plot it twice", ts=plotted))) == 200
        await wait_for(lambda: len(fake_slack.calls("/upload/v1/")) >= 2, timeout=20, message="two uploads")
        holder, survivor = await _holder(runs, plotted, workers)
        await holder.kill()
        await runs.wait_finished(2, within=30)
        assert survivor.alive
    finally:
        await runs.dispose()
    shared = sorted(u.filename for u in fake_slack.uploads)
    assert shared == ["first.png", "second.png"], shared
    assert len(fake_slack.messages(CHANNEL, plotted)) == 1
    assert len(fake_openai.calls("POST /v1/responses$")) == 2


async def test_a_worker_frozen_past_its_lease_touches_nothing_once_thawed(
    processes: Processes,  # noqa: F811
    postgres_url: str,
    fake_slack: FakeSlack,
    fake_openai: FakeOpenAI,
) -> None:
    """SIGSTOP the worker while Slack holds its call closing the streamed answer; the other worker
    takes over when the lease runs out and finishes the answer; SIGCONT: the thawed worker makes
    no further Slack call and changes nothing."""
    await asyncio.to_thread(upgrade, postgres_url)
    web = await processes.start_web("web", postgres_url)
    lease = {"TUTOR_LEASE_SECONDS": "2", **FAST}
    workers = list(await asyncio.gather(*(start_worker(processes, postgres_url, **lease) for _ in range(2))))
    fake_openai.latency = 0.5
    fake_openai.queue(Turn(text="The answer is 42, and here is why: six times seven.", code=None))
    # Slack holds the first worker's close of its stream: longer than the lease (the other worker
    # takes over and finishes meanwhile), shorter than the call's own 5 s deadline, so the frozen
    # worker, once thawed, gets its answer and goes on to the next Slack call, unless fenced.
    fake_slack.delay_next("chat.stopStream", 4.5)
    ts = new_ts()
    assert await processes.send(web, as_json(mention("What is 6 x 7?", ts=ts))) == 200
    await wait_for(lambda: fake_slack.calls("chat.stopStream"), timeout=20, message="the stream closing")
    runs = RunsTable(postgres_url)
    try:
        frozen, other = await _holder(runs, ts, workers)
        frozen.process.send_signal(signal.SIGSTOP)
        try:
            await runs.wait_finished(1, within=40)  # the other worker took over and finished it
            finished = await runs.of(ts)
            calls = len(fake_slack.requests)
        finally:
            frozen.process.send_signal(signal.SIGCONT)
        # Thawed, it notices: its next fenced step finds the lease lost, or its heart-beat finds
        # the run held by the other worker and stops driving it, whichever comes first.
        await wait_for(
            lambda: any(
                "lease lost" in line or "no longer held by this worker" in line
                for line in frozen.stderr().splitlines()
            ),
            timeout=20,
            message="the thawed worker never noticed it lost the run",
        )
        assert len(fake_slack.requests) == calls, [r.path for r in fake_slack.requests[calls:]]
        assert await runs.of(ts) == finished
        assert other.alive
    finally:
        await runs.dispose()
    (answer,) = fake_slack.messages(CHANNEL, ts)
    assert "six times seven" in str(answer.get("text", "")) + json.dumps(answer.get("blocks", []))
    assert len(fake_openai.calls("POST /v1/responses$")) == 1
