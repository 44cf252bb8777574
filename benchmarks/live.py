"""Live answers against the fakes: how soon the model's words show in Slack, and at what cost.

    uv run python -m benchmarks.live [--answers 20] [--concurrent 50] [--code /work/main]
                                     [--postgres postgresql://postgres@127.0.0.1/test]

`slack-tutor run` (web + run-poller, default settings, SQLite) runs as its own process; the fakes
run in this one. The fake model answers 1.5 s after the create, its words spread over the last
second. Prints, per answer:

- first words: from the model's first text delta to the first Slack call that shows text;
- final text: from the model's completion to the last Slack call that writes the answer;
- Slack Web API calls per answer, and OpenAI retrieves per run;
- the same two latencies with `--concurrent` answers in flight on the one process.

`--code DIR` runs the bot from another checkout (e.g. main, before streaming) for a comparison;
the fakes and this script stay the same (a bot that polls sees a non-streamed response whose
"first delta" is where the streamed one's would be).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from db.migrate import upgrade
from tests.conftest import process_env
from tests.fakes import FakeOpenAI, FakeSlack, Turn
from tests.slack_payloads import CHANNEL, as_json, mention, new_ts, signed_headers

MODEL_SECONDS = 1.5
WRITING_SECONDS = 1.0
ANSWER = " ".join(f"Step {n}: subtract 11 from both sides, so **3x = 3** and x = 1." for n in range(8))
SHOWN_BY = ("chat.startStream", "chat.appendStream", "chat.postMessage", "chat.update")


@dataclass
class Timing:
    first_words: float
    final_text: float


@contextlib.asynccontextmanager
async def serving(url: str, slack: FakeSlack, openai: FakeOpenAI, code: str | None) -> AsyncIterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = process_env(
        slack, openai, DATABASE_URL=url, PORT=str(port), LOG_LEVEL="WARNING", TUTOR_WORKER_CONCURRENCY="64"
    )
    if code:
        env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", env=env, stdout=asyncio.subprocess.DEVNULL, cwd=code or None
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
        yield f"http://127.0.0.1:{port}/slack/events"
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()


async def migrate(url: str, code: str | None) -> None:
    """The schema of the checkout that runs (its own migrations)."""
    if code is None:
        await asyncio.to_thread(upgrade, url)
        return
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": code}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "migrate", env=env, cwd=code)
    assert await process.wait() == 0


async def ask(http: aiohttp.ClientSession, endpoint: str, text: str) -> str:
    ts = new_ts()
    body = as_json(mention(text, ts=ts))
    async with http.post(endpoint, data=body.encode(), headers=signed_headers(body)) as response:
        assert response.status == 200
    return ts


async def answered(slack: FakeSlack, ts: str, within: float = 60.0) -> None:
    """The answer has settled: a bot message in the thread with the final text and its buttons."""
    deadline = time.monotonic() + within
    while not any(m.get("blocks") for m in slack.messages(CHANNEL, ts)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer in {ts} within {within:.0f}s")
        await asyncio.sleep(0.05)  # the figures come from the fakes' records, not from this loop


def timing(slack: FakeSlack, openai: FakeOpenAI, ts: str) -> Timing:
    (response,) = [
        r
        for r in openai.responses.values()
        if str(r.request["metadata"].get("slack_thread", "")).endswith(ts)
    ]
    # When the fake model actually wrote its first words and finished (a bot that polls gets a
    # response without deltas: its first words would have come where a streamed one's do).
    completed = response.completed_at
    assert completed is not None
    first_delta = response.first_delta_at or completed - WRITING_SECONDS
    mine = {m["ts"] for m in slack.messages(CHANNEL, ts, live=True)}
    shown = [
        r
        for r in slack.requests
        if r.name in SHOWN_BY
        and r.status == 200
        and (r.args.get("thread_ts") == ts or r.args.get("ts") in mine)
        and (r.name != "chat.startStream" or any(c.get("text") for c in r.args.get("chunks") or []))
    ]
    return Timing(
        first_words=min(r.received_at for r in shown) - first_delta,
        final_text=max(r.received_at for r in shown) - completed,
    )


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(title: str, timings: list[Timing]) -> None:
    print(title)
    for name in ("first_words", "final_text"):
        values = [getattr(t, name) * 1000 for t in timings]
        label = (
            "model's first delta → first words in Slack"
            if name == "first_words"
            else "model done → final text"
        )
        print(f"  {label:45s} p50 {percentile(values, 50):7.0f} ms   p99 {percentile(values, 99):7.0f} ms")


@contextlib.asynccontextmanager
async def database(postgres: str | None) -> AsyncIterator[str]:
    """A fresh SQLite file, or a fresh database on the PostgreSQL server `postgres`."""
    if postgres is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'live.db'}"
        return
    import asyncpg

    name = f"bench_live_{os.getpid()}"
    admin = await asyncpg.connect(postgres)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def run(answers: int, concurrent: int, code: str | None, postgres: str | None) -> None:
    async with database(postgres) as url:
        print(f"database: {url.split(':', 1)[0]}")
        await migrate(url, code)
        async with FakeSlack() as slack, FakeOpenAI() as openai:
            openai.latency, openai.stream_span = MODEL_SECONDS, WRITING_SECONDS
            openai.script = lambda _body: Turn(text=ANSWER, code=None)
            async with serving(url, slack, openai, code) as endpoint, aiohttp.ClientSession() as http:
                await answered(slack, await ask(http, endpoint, "warm-up"))
                slack.clear()
                openai.clear()
                one_by_one = []
                for n in range(answers):
                    ts = await ask(http, endpoint, f"Solve {n}x = {2 * n}")
                    await answered(slack, ts)
                    one_by_one.append(ts)
                calls = len([r for r in slack.requests if r.name != "auth.test"])
                retrieves = len(openai.calls("GET /v1/responses/"))
                report(
                    f"{answers} answers, one at a time (code: {code or 'this checkout'}):",
                    [timing(slack, openai, ts) for ts in one_by_one],
                )
                print(
                    f"  Slack calls per answer: {calls / answers:.1f}   "
                    f"OpenAI retrieves per run: {retrieves / answers:.1f}"
                )
                kinds: dict[str, int] = {}
                for r in slack.requests:
                    kinds[r.name] = kinds.get(r.name, 0) + 1
                print(
                    "  " + ", ".join(f"{name} {count / answers:.1f}" for name, count in sorted(kinds.items()))
                )

                together = await asyncio.gather(
                    *(ask(http, endpoint, f"Question {n}") for n in range(concurrent))
                )
                await asyncio.gather(*(answered(slack, ts, within=120) for ts in together))
                report(
                    f"{concurrent} answers at once on one process:",
                    [timing(slack, openai, ts) for ts in together],
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--answers", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--code", default=None, help="run the bot from this checkout (e.g. /work/main)")
    parser.add_argument(
        "--postgres", default=None, help="an admin URL: the figures on a fresh PostgreSQL database"
    )
    args = parser.parse_args()
    asyncio.run(run(args.answers, args.concurrent, args.code, args.postgres))


if __name__ == "__main__":
    main()
