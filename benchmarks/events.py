"""Drive the real app with signed mentions against the fakes and print figures.

    uv run python -m benchmarks.events [--events 2000] [--senders 20] [--replies 20]
                                      [--database-url postgresql+asyncpg://postgres@127.0.0.1/test]
                                      [--loop uvloop|asyncio]

Prints: ack latency p50/p99 with N concurrent senders, events/s accepted (one web process, no
worker competing for the loop), and the median time from mention to reply with a fake model that
takes 1 s per answer (web + in-process run-poller).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from sqlalchemy import text

from db.migrate import upgrade
from db.session import make_engine
from tests.conftest import process_env
from tests.fakes import FakeOpenAI, FakeSlack
from tests.slack_payloads import CHANNEL, as_json, mention, new_ts, signed_headers


@dataclass(frozen=True)
class Served:
    endpoint: str
    pid: int

    def cpu(self) -> float:
        """CPU seconds the process used so far (Linux /proc)."""
        with open(f"/proc/{self.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def serving(
    command: str, url: str, slack: FakeSlack, openai: FakeOpenAI, *, loop: str = "uvloop"
) -> AsyncIterator[Served]:
    """`slack-tutor web|run` as its own process (the load generator and fakes stay in this one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = process_env(
        slack,
        openai,
        DATABASE_URL=url,
        PORT=str(port),
        LOG_LEVEL="WARNING",
        TUTOR_POLL_INTERVAL="0.2",
        TUTOR_EVENT_LOOP=loop,
    )
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "slack-tutor"), command, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        yield Served(f"http://127.0.0.1:{port}/slack/events", process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()


async def ack_latency(
    http: aiohttp.ClientSession, endpoint: str, events: int, senders: int
) -> tuple[list[float], float]:
    """Signed up front, so the load generator spends its time sending, not hashing. Over `http`'s
    connections: Slack keeps its connections to an app open, so opening them is not measured."""
    signed = [
        (body, signed_headers(body))
        for body in (as_json(mention(f"What is {i} + {i}?", ts=new_ts())) for i in range(events))
    ]
    queue: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue()
    for item in signed:
        queue.put_nowait(item)
    latencies: list[float] = []

    async def sender() -> None:
        while not queue.empty():
            body, headers = queue.get_nowait()
            began = time.perf_counter()
            async with http.post(endpoint, data=body.encode(), headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    elapsed = time.perf_counter() - began
    return latencies, events / elapsed


async def time_to_reply(endpoint: str, slack: FakeSlack, count: int) -> list[float]:
    durations: list[float] = []
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            ts = new_ts()
            body = as_json(mention(f"Solve {i}x = {2 * i}", ts=ts))
            began = time.perf_counter()
            async with http.post(endpoint, data=body.encode(), headers=signed_headers(body)) as response:
                assert response.status == 200
            deadline = began + 30
            while not slack.messages(CHANNEL, ts):
                if time.perf_counter() > deadline:
                    raise RuntimeError("no reply within 30 s")
                await asyncio.sleep(0.005)
            durations.append(time.perf_counter() - began)
    return durations


async def forget_runs(url: str) -> None:
    engine = make_engine(url)
    async with engine.begin() as connection:
        for table in ("deliveries", "runs", "tutor_threads"):
            await connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names
    await engine.dispose()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--replies", type=int, default=20)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="TUTOR_EVENT_LOOP")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        await asyncio.to_thread(upgrade, url)
        async with FakeSlack() as slack, FakeOpenAI() as openai:
            async with (
                serving("web", url, slack, openai, loop=args.loop) as web,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.senders)) as http,
            ):
                # Warm-up: auth.test, the database pool, and the senders' connections.
                await ack_latency(http, web.endpoint, 4 * args.senders, args.senders)
                web_before, own_before = web.cpu(), time.process_time()
                latencies, rate = await ack_latency(http, web.endpoint, args.events, args.senders)
                web_cpu, own_cpu = web.cpu() - web_before, time.process_time() - own_before
            print(f"database: {url.split(':', 1)[0]}, TUTOR_EVENT_LOOP={args.loop}")
            print(f"ack latency with {args.senders} concurrent senders over {args.events} signed mentions:")
            p50, p99 = (percentile(latencies, p) * 1000 for p in (50, 99))
            print(f"  p50 {p50:.1f} ms   p99 {p99:.1f} ms   max {max(latencies) * 1000:.1f} ms")
            print(
                f"  events accepted: {rate:.0f}/s   CPU per event: web {web_cpu / args.events * 1000:.2f} ms,"
                f" load generator and fakes {own_cpu / args.events * 1000:.2f} ms"
            )

        async with FakeSlack() as slack, FakeOpenAI() as openai:
            openai.latency = 1.0
            fresh = url if args.database_url else f"sqlite+aiosqlite:///{Path(tmp) / 'reply.db'}"
            if args.database_url:
                await forget_runs(fresh)  # the ack phase left thousands of queued runs
            else:
                await asyncio.to_thread(upgrade, fresh)
            async with serving("run", fresh, slack, openai, loop=args.loop) as served:
                durations = await time_to_reply(served.endpoint, slack, args.replies)
            print(f"mention → reply with a 1 s fake model, {args.replies} questions:")
            print(f"  median {statistics.median(durations):.2f} s   max {max(durations):.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
