"""Fast rescue: a run whose process died (kill -9, SIGTERM) is answered within 5 s of a restart, or
by another live worker within 5 s of the death, exactly once, and a live worker keeps its run.

Real `python -m bot` processes (forked from one that imported the app: tests/prefork.py) against
the fake Slack and OpenAI servers, with the production lease (TUTOR_LEASE_SECONDS=30): waiting
out a dead process's lease is what these tests catch. Each kill happens while the worker is
inside a step, holding the run's lease: its poll of the response is held by the fake OpenAI
(``delay_next``), and the model is still "thinking".
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from db.migrate import upgrade
from db.models import Run
from tests.conftest import process_env
from tests.fakes import FakeOpenAI, FakeSlack, wait_for
from tests.prefork import ProcessLike, Zygote
from tests.slack_payloads import CHANNEL, as_json, mention, new_ts, signed_headers

#: Spec §4: a crashed or stuck run is picked up again within 5 s of its process restarting.
RESCUE_WITHIN = 5.0
#: Long enough to see today's behaviour (a 30 s lease waited out) and still fail in bounded time.
ANSWER_WAIT = 40.0
STARTUP_WITHIN = 30.0
MODEL_THINKS = 4.0
#: The first poll of the response hangs this long at the fake OpenAI: the worker is mid-step.
RETRIEVE = "GET /v1/responses/"
CREATE = "POST /v1/responses$"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BotProcess:
    """One `python -m bot <command>` process; its output goes to files under tmp_path."""

    name: str
    process: ProcessLike
    port: int | None
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        assert self.port is not None, f"{self.name} serves no HTTP"
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        err = "\n".join(self.stderr().splitlines()[-lines:])
        return (
            f"--- {self.name} (pid {self.pid}, exit {self.process.returncode}) stderr tail ---\n{err}\n"
            f"--- {self.name} stdout tail ---\n" + "\n".join(out.splitlines()[-lines:])
        )

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()


class Processes:
    """Starts bot processes and talks to them over HTTP; kills whatever is left at teardown."""

    def __init__(self, tmp_path: Path, slack: FakeSlack, openai: FakeOpenAI, zygote: Zygote) -> None:
        self._tmp_path = tmp_path
        self._zygote = zygote
        self._slack = slack
        self._openai = openai
        self.started: list[BotProcess] = []
        self._count = 0
        self.http = aiohttp.ClientSession()

    async def start(
        self, command: str, database_url: str, *, port: int | None = None, **env: str
    ) -> BotProcess:
        self._count += 1  # before any await: processes started together get names (and files) of their own
        name = f"{command}-{self._count}"
        extra = {"DATABASE_URL": database_url, **env}
        if port is not None:
            extra["PORT"] = str(port)
        stdout_path = self._tmp_path / f"{name}.out"
        stderr_path = self._tmp_path / f"{name}.err"
        process = await self._zygote.start(
            [command],
            env=process_env(self._slack, self._openai, **extra),
            cwd=self._tmp_path,
            stdout=stdout_path,
            stderr=stderr_path,
        )
        bot = BotProcess(name, process, port, stdout_path, stderr_path)
        self.started.append(bot)
        return bot

    async def start_web(self, command: str, database_url: str, *, port: int | None = None) -> BotProcess:
        """Start a process that serves HTTP and wait until its /healthz answers 200."""
        bot = await self.start(command, database_url, port=port or free_port())
        await self.wait_healthy(bot)
        return bot

    async def healthz(self, bot: BotProcess, *, timeout: float = 2.0) -> int | None:  # noqa: ASYNC109
        """The /healthz status, or None when the process doesn't answer (yet) within ``timeout``."""
        try:
            async with self.http.get(
                f"{bot.url}/healthz", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_healthy(self, bot: BotProcess, within: float = STARTUP_WITHIN) -> None:
        async def healthy() -> bool:
            assert bot.alive, f"{bot.name} exited\n{bot.tail()}"
            return await self.healthz(bot) == 200

        await wait_for(healthy, timeout=within, interval=0.05, message=f"{bot.name} /healthz 200")

    async def wait_logged(self, bot: BotProcess, *words: str, within: float = STARTUP_WITHIN) -> None:
        """Wait for a stderr line holding every word (a worker has no HTTP to ask)."""

        def logged() -> bool:
            assert bot.alive, f"{bot.name} exited\n{bot.tail()}"
            return any(all(w in line for w in words) for line in bot.stderr().splitlines())

        await wait_for(logged, timeout=within, interval=0.05, message=f"{bot.name} logged {words}")

    async def send(
        self,
        bot: BotProcess,
        body: str,
        *,
        retry_num: int | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> int | None:
        """POST a signed event body as Slack does; the status, or None if no answer within ``timeout``."""
        headers = signed_headers(body)
        if retry_num is not None:
            headers.update({"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_error"})
        try:
            async with self.http.post(
                f"{bot.url}/slack/events",
                data=body.encode(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    def tails(self) -> str:
        return "\n".join(bot.tail() for bot in self.started)

    async def aclose(self) -> None:
        for bot in self.started:
            if bot.alive:
                bot.process.kill()
            await bot.process.wait()
        await self.http.close()


@dataclass(frozen=True)
class RunRow:
    id: int
    message_ts: str
    status: str
    lease_owner: str | None


class RunsTable:
    """Reads the `runs` table straight from the database (never through a proxy under test)."""

    def __init__(self, url: str) -> None:
        self._engine: AsyncEngine = create_async_engine(url, poolclass=NullPool)

    async def rows(self) -> list[RunRow]:
        async with self._engine.connect() as connection:
            query = select(Run.id, Run.message_ts, Run.status, Run.lease_owner).order_by(Run.id)
            return [RunRow(*row) for row in await connection.execute(query)]

    async def of(self, ts: str) -> RunRow:
        found = [row for row in await self.rows() if row.message_ts == ts]
        assert found, f"no run for the question {ts}"
        return found[0]

    async def wait_finished(self, count: int, within: float = 15.0) -> list[RunRow]:
        async def finished() -> list[RunRow] | None:
            rows = await self.rows()
            done = len(rows) >= count and all(row.status in ("done", "failed") for row in rows)
            return rows if done else None

        rows: list[RunRow] = await wait_for(
            finished, timeout=within, interval=0.1, message=f"{count} runs finished"
        )
        return rows

    async def dispose(self) -> None:
        await self._engine.dispose()


def lease_pid(owner: str | None) -> int | None:
    """The pid in a lease owner "hostname:pid:nonce"."""
    return int(owner.rsplit(":", 2)[1]) if owner else None


@pytest_asyncio.fixture
async def processes(
    tmp_path: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI, zygote: Zygote
) -> AsyncIterator[Processes]:
    started = Processes(tmp_path, fake_slack, fake_openai, zygote)
    try:
        yield started
    finally:
        await started.aclose()
        print(started.tails())  # pytest shows it for a failed test (and with -s)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest) -> str:
    """An empty database: a SQLite file, or a fresh PostgreSQL database."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest_asyncio.fixture
async def runs_table(backend_url: str) -> AsyncIterator[RunsTable]:
    table = RunsTable(backend_url)
    yield table
    await table.dispose()


async def ask_and_hold_stream(
    processes: Processes, web: BotProcess, openai: FakeOpenAI, text: str, *, thinks: float = MODEL_THINKS
) -> str:
    """Ask a question; return its ts once a worker is following the response's event stream
    (the create's stream is open) while the model still thinks."""
    openai.latency = thinks
    ts = new_ts()
    assert await processes.send(web, as_json(mention(text, ts=ts))) == 200
    await wait_for(lambda: openai.responses, timeout=15, message="the response was never created")
    await wait_for(
        lambda: [r for r in openai.calls(CREATE) if r.status is None],
        timeout=10,
        message="no worker is following the response's stream",
    )
    assert not any(state.terminal for state in openai.responses.values()), "the model is still thinking"
    return ts


async def wait_streaming(runs_table: RunsTable, ts: str) -> RunRow:
    """The run once its worker has stored the response id from the stream's first event."""

    async def streaming() -> RunRow | None:
        run = await runs_table.of(ts)
        return run if run.status == "streaming" else None

    return await wait_for(streaming, timeout=10, message="the run never started streaming")


async def time_to_answer(slack: FakeSlack, ts: str, since: float) -> float:
    await wait_for(
        lambda: slack.messages(CHANNEL, ts), timeout=ANSWER_WAIT, interval=0.05, message="no answer posted"
    )
    return time.monotonic() - since


def assert_answered_once(slack: FakeSlack, openai: FakeOpenAI, ts: str) -> None:
    """One answer message (streamed, or posted), settled, and one create."""
    posts = [c for c in slack.calls("chat.postMessage") if c.args.get("thread_ts") == ts]
    streams = [c for c in slack.calls("chat.startStream") if c.args.get("thread_ts") == ts]
    assert len(slack.messages(CHANNEL, ts, live=True)) == 1, slack.messages(CHANNEL, ts, live=True)
    assert len(slack.messages(CHANNEL, ts)) == 1, "the answer was left half-written"
    assert len(posts) + len(streams) == 1, [p.args.get("text") for p in posts]
    assert len(openai.calls(CREATE)) == 1, "a second response was created for the same question"


async def test_killed_process_resumes_within_5s_of_restart(
    processes: Processes,
    backend_url: str,
    runs_table: RunsTable,
    fake_slack: FakeSlack,
    fake_openai: FakeOpenAI,
) -> None:
    port = free_port()
    first = await processes.start_web("run", backend_url, port=port)
    ts = await ask_and_hold_stream(processes, first, fake_openai, "What is 3 + 4?")
    run = await wait_streaming(runs_table, ts)
    assert run.status == "streaming" and lease_pid(run.lease_owner) == first.pid, run

    await first.kill()
    killed_at = time.monotonic()
    second = await processes.start_web("run", backend_url, port=port)
    healthy_at = time.monotonic()
    waited = await time_to_answer(fake_slack, ts, healthy_at)
    print(
        f"\nkill -9 → restart: answer {waited:.1f}s after /healthz 200 "
        f"({time.monotonic() - killed_at:.1f}s after the kill)"
    )
    await runs_table.wait_finished(1)
    assert second.alive
    assert_answered_once(fake_slack, fake_openai, ts)
    assert waited <= RESCUE_WITHIN, f"answered {waited:.1f}s after the restart, not within {RESCUE_WITHIN}s"


async def test_sigterm_exits_promptly_and_restart_resumes_within_5s(
    processes: Processes, sqlite_url: str, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    runs_table = RunsTable(sqlite_url)
    try:
        port = free_port()
        first = await processes.start_web("run", sqlite_url, port=port)
        ts = await ask_and_hold_stream(processes, first, fake_openai, "What is 12 / 4?")
        assert lease_pid((await wait_streaming(runs_table, ts)).lease_owner) == first.pid

        first.process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        try:
            await asyncio.wait_for(first.process.wait(), timeout=10)
        except TimeoutError:
            pytest.fail(f"still running 10 s after SIGTERM\n{first.tail()}")
        print(f"\nSIGTERM: exited in {time.monotonic() - stopping:.1f}s with {first.process.returncode}")
        run = await runs_table.of(ts)
        print(f"after SIGTERM the run is {run.status}, leased by {run.lease_owner}")

        await processes.start_web("run", sqlite_url, port=port)
        waited = await time_to_answer(fake_slack, ts, time.monotonic())
        print(f"SIGTERM → restart: answer {waited:.1f}s after /healthz 200")
        await runs_table.wait_finished(1)
        assert_answered_once(fake_slack, fake_openai, ts)
        assert waited <= RESCUE_WITHIN, (
            f"answered {waited:.1f}s after the restart, not within {RESCUE_WITHIN}s"
        )
    finally:
        await runs_table.dispose()


async def test_sigterm_while_the_answer_message_is_being_opened_leaves_one_message(
    processes: Processes, sqlite_url: str, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    """SIGTERM lands while `chat.startStream` is on its way: Slack makes the message, but its
    answer comes after the grace period. The stopping worker waits for it (and records the
    message) instead of abandoning the call, so the restart goes on in that message. Before, the
    wait for the relay was a `gather`, whose cancel at the end of the grace cancelled the call:
    the restart posted the answer again and the first message stayed half-written (this is also
    how `test_sigterm_exits_promptly_and_restart_resumes_within_5s` failed now and then)."""
    runs_table = RunsTable(sqlite_url)
    try:
        port = free_port()
        first = await processes.start_web("run", sqlite_url, port=port)
        fake_slack.delay_next("chat.startStream", 5.0, after_handling=True)  # answered after the 3 s grace
        ts = new_ts()
        fake_openai.latency = 1.5
        assert await processes.send(first, as_json(mention("What is 12 / 4?", ts=ts))) == 200
        await wait_for(
            lambda: fake_slack.calls("chat.startStream"), timeout=15, message="the answer never started"
        )
        first.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(first.process.wait(), timeout=15)
        except TimeoutError:
            pytest.fail(f"still running 15 s after SIGTERM\n{first.tail()}")
        run = await runs_table.of(ts)
        print(f"\nafter SIGTERM the run is {run.status}")

        await processes.start_web("run", sqlite_url, port=port)
        await time_to_answer(fake_slack, ts, time.monotonic())
        await runs_table.wait_finished(1)
        (answer,) = fake_slack.messages(CHANNEL, ts, live=True)
        assert "3x = 3" in str(answer.get("text")), answer
        assert len(fake_slack.calls("chat.startStream")) == 1, "a second message was opened"
        assert len(fake_openai.calls(CREATE)) == 1
    finally:
        await runs_table.dispose()


async def test_kill_9_while_the_answer_message_is_being_opened_leaves_one_message(
    processes: Processes, sqlite_url: str, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    """kill -9 lands while `chat.startStream` is on its way: Slack makes the message, and the
    worker dies before it hears its ts. `chat.startStream` takes no metadata, so the message
    can't be tagged and found as a post is: the restart finds the app's untagged message in the
    thread after the question (the run recorded that a stream was being opened) and finishes the
    answer in it, instead of leaving it half-written beside a second one."""
    runs_table = RunsTable(sqlite_url)
    try:
        port = free_port()
        first = await processes.start_web("run", sqlite_url, port=port)
        fake_slack.delay_next("chat.startStream", 30.0, after_handling=True)
        ts = new_ts()
        fake_openai.latency = 1.5
        assert await processes.send(first, as_json(mention("What is 12 / 4?", ts=ts))) == 200
        await wait_for(lambda: fake_slack.messages(CHANNEL, ts, live=True), timeout=15, message="no message")
        await first.kill()
        fake_slack.release_delays()

        await processes.start_web("run", sqlite_url, port=port)
        await time_to_answer(fake_slack, ts, time.monotonic())
        await runs_table.wait_finished(1)
        answers = fake_slack.messages(CHANNEL, ts, live=True)
        assert len(answers) == 1, f"{len(answers)} messages: {[a.get('text') for a in answers]}"
        assert "3x = 3" in str(answers[0].get("text")), answers[0]
        assert not answers[0].get("live"), "the message was left streaming"
        assert len(fake_openai.calls(CREATE)) == 1
    finally:
        await runs_table.dispose()


async def start_worker(processes: Processes, postgres_url: str, **env: str) -> BotProcess:
    worker = await processes.start("worker", postgres_url, **env)
    await processes.wait_logged(worker, "run-poller", "started")
    return worker


@pytest.mark.postgres
@pytest.mark.migrated_postgres  # its database starts migrated: upgrade finds nothing to do
async def test_dead_worker_is_rescued_by_the_live_one_within_5s(
    processes: Processes, postgres_url: str, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    runs_table = RunsTable(postgres_url)
    try:
        web = await processes.start_web("web", postgres_url)
        workers = await asyncio.gather(*(start_worker(processes, postgres_url) for _ in range(2)))
        ts = await ask_and_hold_stream(processes, web, fake_openai, "What is 9 - 2?")
        owner = (await wait_streaming(runs_table, ts)).lease_owner
        holders = [w for w in workers if w.pid == lease_pid(owner)]
        assert len(holders) == 1, f"lease owner {owner!r} is neither worker {[w.pid for w in workers]}"
        (holder,) = holders
        (survivor,) = [w for w in workers if w is not holder]

        await holder.kill()
        waited = await time_to_answer(fake_slack, ts, time.monotonic())
        print(f"\nkill -9 of the worker holding the run: answer {waited:.1f}s after the kill")
        await runs_table.wait_finished(1)
        assert survivor.alive and web.alive
        assert_answered_once(fake_slack, fake_openai, ts)
        assert waited <= RESCUE_WITHIN, f"answered {waited:.1f}s after the kill, not within {RESCUE_WITHIN}s"
    finally:
        await runs_table.dispose()


@pytest.mark.postgres
@pytest.mark.migrated_postgres  # its database starts migrated: upgrade finds nothing to do
async def test_live_slow_worker_keeps_its_run(
    processes: Processes, postgres_url: str, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    """A worker stuck in a slow call is alive: a newly started worker must not take its run."""
    await asyncio.to_thread(upgrade, postgres_url)
    runs_table = RunsTable(postgres_url)
    try:
        web = await processes.start_web("web", postgres_url)
        # Its model thinks until the watch below is over, however long the second worker takes to start.
        slow = await start_worker(processes, postgres_url, TUTOR_OPENAI_TIMEOUT="120")
        ts = await ask_and_hold_stream(processes, web, fake_openai, "What is 5 * 6?", thinks=3600.0)
        assert lease_pid((await wait_streaming(runs_table, ts)).lease_owner) == slow.pid
        await start_worker(processes, postgres_url)

        # Longer than any rescue may take: the live worker's run must stay its own throughout.
        watch_until = time.monotonic() + RESCUE_WITHIN + 1
        while time.monotonic() < watch_until:
            run = await runs_table.of(ts)
            assert run.status == "streaming" and lease_pid(run.lease_owner) == slow.pid, run
            assert not fake_openai.calls(RETRIEVE), "another worker picked up the live worker's run"
            await asyncio.sleep(0.2)
        (response_id,) = fake_openai.responses
        fake_openai.complete(response_id)

        await time_to_answer(fake_slack, ts, time.monotonic())
        await runs_table.wait_finished(1)
        assert_answered_once(fake_slack, fake_openai, ts)
    finally:
        await runs_table.dispose()
