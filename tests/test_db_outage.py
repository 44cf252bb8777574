"""A 10 s PostgreSQL outage: the bot keeps running, says so on /healthz, refuses what it cannot
store (so Slack retries it), and afterwards answers every question exactly once.

The outage is a TCP proxy between `python -m bot run` and the shared PostgreSQL server, cut and
restored by the test; the server itself is never touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from db.migrate import upgrade
from tests.fakes import FakeOpenAI, FakeSlack, wait_for
from tests.slack_payloads import CHANNEL, as_json, mention, new_ts
from tests.tcp_proxy import TcpProxy
from tests.test_rescue import CREATE, BotProcess, Processes, RunsTable, processes

__all__ = ["processes"]  # the fixture, shared with test_rescue

#: Their databases start migrated (a copy of conftest's template); their own upgrade finds nothing to do.
pytestmark = [pytest.mark.postgres, pytest.mark.migrated_postgres]

OUTAGE = 10.0
#: Every /healthz must answer within this, outage or not: a load balancer's probe has a timeout.
HEALTHZ_WITHIN = 3.0
#: Slack waits 3 s for an ack; an answer later than that is a timeout to Slack.
ACK_WITHIN = 3.0
RECOVER_WITHIN = 15.0
TRACEBACK = "Traceback (most recent call last)"


@pytest_asyncio.fixture
async def db_proxy(postgres_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A migrated database, a proxy in front of it, and the database URL through the proxy."""
    await asyncio.to_thread(upgrade, postgres_url)
    url = make_url(postgres_url)
    async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


class Probe:
    """Times every call made during the outage, so each bound is checked, not just the last."""

    def __init__(self, processes: Processes, bot: BotProcess) -> None:
        self.processes = processes
        self.bot = bot
        self.problems: list[str] = []
        self.healthz_seen: list[tuple[float, int | None, float]] = []

    async def healthz(self, since: float) -> int | None:
        started = time.monotonic()
        status = await self.processes.healthz(self.bot, timeout=HEALTHZ_WITHIN + 2)
        took = time.monotonic() - started
        self.healthz_seen.append((started - since, status, took))
        if status is None or took > HEALTHZ_WITHIN:
            self.problems.append(
                f"/healthz took {took:.1f}s ({status}) at +{started - since:.1f}s of the outage"
            )
        return status

    def check_503_within(self, seconds: float) -> None:
        first = next((at for at, status, _took in self.healthz_seen if status == 503), None)
        if first is None or first > seconds:
            when = "never" if first is None else f"first at +{first:.1f}s"
            self.problems.append(f"/healthz said 503 {when} during the outage, not within {seconds}s")

    async def outage(self, cut_at: float, bodies: list[str]) -> None:
        """Send events that can't be stored while probing /healthz until the outage ends."""
        await asyncio.gather(*(self.event_refused(body) for body in bodies), self._probe_healthz(cut_at))

    async def _probe_healthz(self, cut_at: float) -> None:
        while time.monotonic() - cut_at < OUTAGE - 1:
            await self.healthz(cut_at)
            await asyncio.sleep(1.0)

    async def event_refused(self, body: str) -> None:
        started = time.monotonic()
        status = await self.processes.send(self.bot, body, timeout=ACK_WITHIN + 2)
        took = time.monotonic() - started
        print(f"event during the outage: {status} in {took:.2f}s")
        if status == 200:
            self.problems.append("an event was acked with 200 while its question could not be stored")
        elif status is None or took > ACK_WITHIN:
            self.problems.append(f"an event during the outage got {status} after {took:.1f}s")


@pytest.mark.parametrize("blackhole", [False, True], ids=["refused", "blackholed"])
async def test_database_outage_is_survived_and_every_question_answered_once(
    blackhole: bool,
    processes: Processes,
    db_proxy: tuple[TcpProxy, str],
    postgres_url: str,
    fake_slack: FakeSlack,
    fake_openai: FakeOpenAI,
) -> None:
    proxy, through_proxy = db_proxy
    runs_table = RunsTable(postgres_url)
    try:
        bot = await processes.start_web("run", through_proxy)
        probe = Probe(processes, bot)
        before = new_ts()
        assert await processes.send(bot, as_json(mention("What is 3 + 4?", ts=before))) == 200
        await runs_table.wait_finished(1)
        assert len(fake_slack.messages(CHANNEL, before)) == 1

        log_before_outage = len(bot.stderr())
        await proxy.cut(blackhole=blackhole)
        cut_at = time.monotonic()
        during = [new_ts(), new_ts()]
        bodies = [as_json(mention(f"Question {i} during the outage", ts=ts)) for i, ts in enumerate(during)]
        probing = asyncio.create_task(probe.outage(cut_at, bodies))
        await asyncio.sleep(OUTAGE)  # the fault's length, not a wait for a condition
        await proxy.restore()
        restored_at = time.monotonic()
        await probing
        assert bot.alive, f"the process died during the outage\n{bot.tail()}"
        probe.check_503_within(HEALTHZ_WITHIN + 2)
        print(f"\nhealthz during the outage (at, status, took): {_rounded(probe.healthz_seen)}")
        print(f"problems during the outage: {probe.problems}")
        await processes.wait_healthy(bot, within=RECOVER_WITHIN)
        print(f"/healthz 200 again {time.monotonic() - restored_at:.1f}s after the restore")
        for body in bodies:  # Slack's retries of the events it saw fail
            assert await processes.send(bot, body, retry_num=1) == 200
        after = new_ts()
        assert await processes.send(bot, as_json(mention("What is 5 * 6?", ts=after))) == 200

        threads = [before, *during, after]
        await wait_for(
            lambda: all(fake_slack.messages(CHANNEL, ts) for ts in threads),
            timeout=RECOVER_WITHIN,
            message="every question answered",
        )
        await runs_table.wait_finished(len(threads))
        # One answer message per thread: posted, or streamed when its first words came before the
        # model was done (which of the two depends on timing).
        new_messages = fake_slack.calls("chat.postMessage") + fake_slack.calls("chat.startStream")
        posts = {ts: len([c for c in new_messages if c.args.get("thread_ts") == ts]) for ts in threads}
        print(
            f"posts per thread: {list(posts.values())}; responses created: {len(fake_openai.calls(CREATE))}"
        )
        assert bot.alive
        assert posts == dict.fromkeys(threads, 1)
        assert len(fake_openai.calls(CREATE)) == len(threads)
        tracebacks = bot.stderr()[log_before_outage:].count(TRACEBACK)
        if tracebacks:
            probe.problems.append(f"{tracebacks} tracebacks logged for one outage")
        assert not probe.problems, "\n".join(probe.problems)
    finally:
        await runs_table.dispose()


def _rounded(seen: list[tuple[float, int | None, float]]) -> list[tuple[float, int | None, float]]:
    return [(round(at, 1), status, round(took, 2)) for at, status, took in seen]
