"""Drain a burst with `web` + N `worker` processes on PostgreSQL, against the fakes.

    uv run python -m benchmarks.drain [--workers 1 2 4] [--threads 200] [--per-thread 5]
                                      [--senders 50] [--model 1.5] [--concurrency 100] [--loop uvloop|asyncio]
                                      [--postgres postgresql://postgres@127.0.0.1/test]

Each thread is a mention and then follow-ups in its thread (`--per-thread` questions), each thread
in a channel of its own (Slack's ~1 post/s per channel would otherwise be the limit, not the
tutor), sent by `--senders` concurrent senders as fast as the web process acks. A follow-up is sent
once the question before it in its thread was acked (as people type one after the other), not
answered. Prints, per worker count: the time until every question was answered, the answer
latency p50/p99 (ack → reply in Slack), and checks that each thread got its answers once each,
in order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks.events import percentile
from db.migrate import upgrade
from tests.conftest import process_env
from tests.fakes import FakeOpenAI, FakeSlack, Turn
from tests.slack_payloads import as_json, mention, message, new_ts, signed_headers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (Linux /proc), in seconds."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU of every PostgreSQL process on this machine, exited backends included (the postmaster's
    reaped children), in seconds; nan where /proc can't tell."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            fields = _stat(entry.name)
            total += int(fields[11]) + int(fields[12])
            parent = (Path("/proc") / fields[1] / "comm").read_text().strip()
            if parent != "postgres":  # the postmaster: add its exited children
                total += int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK") if total else float("nan")


@dataclass
class Deployment:
    events_url: str
    pids: dict[str, list[int]]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: web, workers (summed), PostgreSQL, and this process (fakes + load)."""
        return {
            "web": sum(cpu_seconds(pid) for pid in self.pids["web"]),
            "workers": sum(cpu_seconds(pid) for pid in self.pids["worker"]),
            "PostgreSQL": postgres_cpu_seconds(),
            "fakes+load": time.process_time(),
        }


@contextlib.asynccontextmanager
async def processes(
    url: str, slack: FakeSlack, openai: FakeOpenAI, *, workers: int, concurrency: int, loop: str = "uvloop"
) -> AsyncIterator[Deployment]:
    """`slack-tutor web` and `workers` × `slack-tutor worker`."""
    started: list[asyncio.subprocess.Process] = []
    pids: dict[str, list[int]] = {"web": [], "worker": []}
    web_port = free_port()
    common = {
        "DATABASE_URL": url,
        "LOG_LEVEL": "WARNING",
        "TUTOR_WORKER_CONCURRENCY": str(concurrency),
        "TUTOR_EVENT_LOOP": loop,
    }
    binary = str(Path(sys.executable).parent / "slack-tutor")
    try:
        for command, port in [("web", web_port)] + [("worker", free_port()) for _ in range(workers)]:
            env = process_env(slack, openai, PORT=str(port), **common)
            started.append(
                await asyncio.create_subprocess_exec(
                    binary, command, env=env, stdout=asyncio.subprocess.DEVNULL
                )
            )
            pids[command].append(started[-1].pid)
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{web_port}/healthz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # the workers' imports and first claim
        yield Deployment(f"http://127.0.0.1:{web_port}/slack/events", pids)
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in started:
            await process.wait()


async def wait_finished(url: str, total: int, *, deadline: float) -> dict[str, float]:
    """Poll the runs table until `total` runs are done; each question's finish time (epoch s)."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        while True:
            rows = await connection.fetch(
                "SELECT message_ts, extract(epoch FROM finished_at) AS at FROM runs WHERE status = 'done'"
            )
            if len(rows) >= total or time.monotonic() > deadline:
                return {row["message_ts"]: float(row["at"]) for row in rows}
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


async def database_transactions(url: str) -> int:
    """Commits and rollbacks in the benchmark's database so far (pg_stat_database, all sessions)."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute("SELECT pg_stat_clear_snapshot()")
        value = await connection.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(value)
    finally:
        await connection.close()


def answering(request: dict[str, Any]) -> Turn:
    tags = re.findall(r"\[slack message ([0-9.]+)\]", json.dumps(request.get("input")))
    return Turn(text=f"Answer to {tags[-1]}.", code=None)


async def burst(
    endpoint: str, *, threads: int, per_thread: int, senders: int
) -> tuple[dict[str, float], dict[tuple[str, str], list[str]]]:
    """Send the burst; returns ack time per question ts, and the questions of each (channel, root)."""
    acked: dict[str, float] = {}
    asked: dict[tuple[str, str], list[str]] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(threads):
        queue.put_nowait(i)
    connector = aiohttp.TCPConnector(limit=senders)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def send(body: str, ts: str) -> None:
            async with http.post(endpoint, data=body.encode(), headers=signed_headers(body)) as response:
                await response.read()
                assert response.status == 200, response.status
            acked[ts] = time.time()  # the fakes stamp requests with time.time()

        async def sender() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                channel, root = f"C{i:07d}", new_ts()
                asked[(channel, root)] = [root]
                await send(as_json(mention(f"Question 1 of thread {i}", ts=root, channel=channel)), root)
                for n in range(2, per_thread + 1):
                    ts = new_ts()
                    asked[(channel, root)].append(ts)
                    body = as_json(
                        message(f"Question {n} of thread {i}", ts=ts, thread_ts=root, channel=channel)
                    )
                    await send(body, ts)

        await asyncio.gather(*(sender() for _ in range(senders)))
    return acked, asked


async def drain(args: argparse.Namespace, workers: int) -> None:
    name = f"bench_drain_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.postgres)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = args.postgres.rsplit("/", 1)[0] + f"/{name}"
    total = args.threads * args.per_thread
    try:
        await asyncio.to_thread(upgrade, url)
        async with FakeSlack() as slack, FakeOpenAI() as openai:
            openai.latency = args.model
            openai.script = answering
            async with processes(
                url, slack, openai, workers=workers, concurrency=args.concurrency, loop=args.loop
            ) as deployment:
                cpu_before = deployment.cpu()
                transactions_before = await database_transactions(url)
                began = time.monotonic()
                acked, asked = await burst(
                    deployment.events_url,
                    threads=args.threads,
                    per_thread=args.per_thread,
                    senders=args.senders,
                )
                sent = time.monotonic() - began
                finished = await wait_finished(url, total, deadline=began + 600)
                drained = time.monotonic() - began
                cpu = {k: v - cpu_before[k] for k, v in deployment.cpu().items()}
                transactions = await database_transactions(url) - transactions_before
            wrong = 0
            for (channel, root), questions in asked.items():
                texts = [str(m.get("text")) for m in slack.messages(channel, root)]
                if len(texts) != len(questions) or any(
                    f"Answer to {ts}" not in text for ts, text in zip(questions, texts, strict=False)
                ):
                    wrong += 1
                    if wrong <= 3:  # what went wrong, for the first few
                        print(f"     {channel} asked {questions}, got {[t[:60] for t in texts]}")
            answered_at = finished
        latencies = [answered_at[ts] - acked[ts] for ts in acked if ts in answered_at]
        p50, p99 = (percentile(latencies, p) for p in (50, 99))
        print(
            f"  {workers} worker{'s' if workers > 1 else ' '}: {len(latencies)}/{total} answered"
            f" in {drained:5.1f} s"
            f" (sent in {sent:4.1f} s)   answer p50 {p50:5.1f} s   p99 {p99:5.1f} s"
            f"   threads out of order or with a lost/double answer: {wrong}"
        )
        print(
            f"     CPU per answer: {sum(cpu.values()) / total * 1000:.0f} ms"
            f" ({', '.join(f'{name} {seconds / total * 1000:.0f}' for name, seconds in cpu.items())});"
            f" {transactions / total:.1f} database transactions"
        )
        for server in (slack, openai):
            calls = Counter(request.name for request in server.requests)
            print(
                f"     {type(server).__name__}: {sum(calls.values()) / total:.1f} calls per answer"
                f" ({', '.join(f'{name} {n / total:.1f}' for name, n in calls.most_common(5))})"
            )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=200)
    parser.add_argument("--per-thread", type=int, default=5)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--model", type=float, default=1.5)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1/test")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="TUTOR_EVENT_LOOP")
    args = parser.parse_args()
    floor = args.per_thread * args.model
    print(
        f"{args.threads * args.per_thread} questions in {args.threads} threads ({args.per_thread} each, "
        f"model {args.model} s: {floor:.1f} s per thread at best), {args.senders} senders, "
        f"TUTOR_WORKER_CONCURRENCY={args.concurrency}, TUTOR_EVENT_LOOP={args.loop}:"
    )
    for workers in args.workers:
        await drain(args, workers)


if __name__ == "__main__":
    asyncio.run(main())
