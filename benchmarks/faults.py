"""Time what users wait for under faults, against the fakes, with `slack-tutor run` as its own process.

    uv run python -m benchmarks.faults [--database-url postgresql+asyncpg://postgres@127.0.0.1/bench]

Prints, in seconds:
- hung retrieve: a question in another channel, asked while one response's retrieve hangs;
  and when the user of the hung run hears back (TUTOR_RUN_TIMEOUT=30 here);
- create 5xx: a question whose first `POST /v1/responses` answers 500;
- Slack outage: chat.postMessage answers 500 for 40 s; from Slack's recovery to the answer;
- kill -9: the process is killed while the model thinks, then restarted; from `/healthz` 200 to
  the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from db.migrate import upgrade
from tests.conftest import process_env
from tests.fakes import FakeOpenAI, FakeSlack
from tests.slack_payloads import CHANNEL, as_json, mention, new_ts, signed_headers

OTHER = "C0OTHER"
SCENARIOS = ["hung", "create", "outage", "kill"]
SLACK_DOWN = {"ok": False, "error": "internal_error"}
SERVER_ERROR = {"error": {"message": "The server had an error", "type": "server_error", "code": None}}


class Bot:
    """`slack-tutor run` on a free port; restartable."""

    def __init__(self, url: str, slack: FakeSlack, openai: FakeOpenAI, **env: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.env = process_env(slack, openai, DATABASE_URL=url, PORT=str(self.port), LOG_LEVEL="ERROR", **env)
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        """Start it; returns the monotonic time `/healthz` first answered 200."""
        self.process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "slack-tutor"),
            "run",
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.port}/healthz") as response:
                        if response.status == 200:
                            return time.monotonic()
                await asyncio.sleep(0.05)
        raise RuntimeError("slack-tutor run never became healthy")

    async def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)
            await self.process.wait()

    async def ask(self, text: str, *, channel: str = CHANNEL) -> str:
        ts = new_ts()
        body = as_json(mention(text, ts=ts, channel=channel))
        async with aiohttp.ClientSession() as http:
            endpoint = f"http://127.0.0.1:{self.port}/slack/events"
            async with http.post(endpoint, data=body.encode(), headers=signed_headers(body)) as response:
                assert response.status == 200, response.status
        return ts


async def until(predicate: Callable[[], Any], within: float) -> float:
    """Wait for `predicate`; returns the monotonic time it became true (inf if it never did)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return float("inf")
        await asyncio.sleep(0.01)
    return time.monotonic()


@contextlib.asynccontextmanager
async def running(url: str, **env: str) -> AsyncIterator[tuple[Bot, FakeSlack, FakeOpenAI]]:
    async with FakeSlack() as slack, FakeOpenAI() as openai:
        bot = Bot(url, slack, openai, TUTOR_POLL_INTERVAL="0.2", **env)
        await bot.start()
        try:
            yield bot, slack, openai
        finally:
            await bot.stop(signal.SIGKILL)


async def hung_retrieve(url: str) -> tuple[float, float]:
    async with running(url, TUTOR_RUN_TIMEOUT="30") as (bot, slack, openai):
        openai.latency = 3.0
        hung = await bot.ask("A question whose run hangs")
        await until(lambda: openai.responses, 10)
        openai.delay_next(f"GET /v1/responses/{next(iter(openai.responses))}", 3600, times=10_000)
        asked = time.monotonic()
        other = await bot.ask("What is 2 + 2?", channel=OTHER)
        answered = await until(lambda: slack.messages(OTHER, other), 150)
        told = await until(lambda: slack.messages(CHANNEL, hung), 150)
        return answered - asked, told - asked


async def create_5xx(url: str) -> float:
    async with running(url) as (bot, slack, openai):
        openai.fail_next("POST /v1/responses$", status=500, body=SERVER_ERROR)
        asked = time.monotonic()
        ts = await bot.ask("Solve 3x + 11 = 14")
        return await until(lambda: slack.messages(CHANNEL, ts), 150) - asked


async def slack_outage(url: str, seconds: float) -> float:
    async with running(url) as (bot, slack, _openai):
        slack.fail_next("chat.postMessage", status=500, body=SLACK_DOWN, times=1_000_000)
        ts = await bot.ask("What is 6 * 7?")
        await asyncio.sleep(seconds)  # the outage itself
        slack.clear_faults()
        recovered = time.monotonic()
        return await until(lambda: slack.messages(CHANNEL, ts), 2 * 60 + seconds) - recovered


async def kill_and_restart(url: str) -> float:
    async with running(url) as (bot, slack, openai):
        openai.latency = 4.0
        ts = await bot.ask("Compute something slowly")
        await until(lambda: openai.responses, 10)
        await bot.stop(signal.SIGKILL)
        healthy = await bot.start()
        return await until(lambda: slack.messages(CHANNEL, ts), 120) - healthy


async def fresh_database(tmp: str, postgres: str | None, name: str) -> str:
    """An empty, migrated database for one scenario (SQLite file, or a new PostgreSQL database)."""
    if postgres is None:
        url = f"sqlite+aiosqlite:///{Path(tmp) / f'{name}.db'}"
    else:
        import asyncpg

        database = f"tutor_faults_{name}_{int(time.time())}"
        admin = await asyncpg.connect(postgres)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()
        url = postgres.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{database}"
    await asyncio.to_thread(upgrade, url)
    return url


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--postgres", default=None, help="admin URL, e.g. postgresql://postgres@127.0.0.1/test"
    )
    parser.add_argument("--outage", type=float, default=40.0, help="seconds Slack answers 500")
    parser.add_argument("--only", nargs="*", default=SCENARIOS, choices=SCENARIOS, help="scenarios to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"database: {'postgresql' if args.postgres else 'sqlite'}")
        if "hung" in args.only:
            other, told = await hung_retrieve(await fresh_database(tmp, args.postgres, "hung"))
            print(f"hung retrieve: other channel answered after {other:.2f} s;", end=" ")
            print(f"hung user told after {told:.1f} s")
        if "create" in args.only:
            answered = await create_5xx(await fresh_database(tmp, args.postgres, "create"))
            print(f"create 5xx: answered after {answered:.2f} s")
        if "outage" in args.only:
            after = await slack_outage(await fresh_database(tmp, args.postgres, "outage"), args.outage)
            print(f"Slack outage of {args.outage:.0f} s: answer {after:.1f} s after recovery")
        if "kill" in args.only:
            rescued = await kill_and_restart(await fresh_database(tmp, args.postgres, "kill"))
            print(f"kill -9 + restart: answer {rescued:.2f} s after /healthz 200")


if __name__ == "__main__":
    asyncio.run(main())
