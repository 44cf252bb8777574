"""LISTEN/NOTIFY wake latency on PostgreSQL.

    uv run python -m benchmarks.handoff [--postgres postgresql://postgres@127.0.0.1/test]
                                        [--trials 200] [--questions 20]

1. Database: a question row committed by one connection → the worker's listener called
   (`db.notify.WorkListener`), `--trials` times.
2. End to end: a signed mention acked by `slack-tutor web` → the first OpenAI call of a separate
   `slack-tutor worker` whose poll interval is 30 s (so only the notification can wake it).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import asyncpg
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from benchmarks.events import percentile
from db.migrate import upgrade
from db.models import Run, TutorThread, utcnow
from db.notify import WorkListener
from tests.fakes import FakeOpenAI, FakeSlack, RecordedRequest, wait_for
from tests.prefork import Zygote
from tests.slack_payloads import as_json, mention, new_ts
from tests.test_rescue import Processes


async def database_latency(url: str, trials: int) -> list[float]:
    woken = asyncio.Event()
    listener = WorkListener(url, woken.set)
    task = asyncio.create_task(listener.run_forever())
    engine = create_async_engine(url, poolclass=NullPool)
    latencies: list[float] = []
    try:
        await wait_for(listener.listening.is_set, timeout=10)
        async with engine.begin() as connection:
            thread_id = (
                await connection.execute(
                    insert(TutorThread)
                    .values(team_id="T1", channel_id="C1", thread_ts="1.0", state="active")
                    .returning(TutorThread.id)
                )
            ).scalar_one()
        async with engine.connect() as connection:
            for i in range(trials):
                woken.clear()
                await connection.execute(
                    insert(Run).values(
                        run_uuid=str(uuid.uuid4()),
                        thread_id=thread_id,
                        team_id="T1",
                        channel_id="C1",
                        message_ts=f"{i}.0",
                        user_id="U1",
                        text="?",
                        status="done",
                        next_attempt_at=utcnow(),
                        created_at=utcnow(),
                    )
                )
                began = time.perf_counter()
                await connection.commit()
                async with asyncio.timeout(5):
                    await woken.wait()
                latencies.append(time.perf_counter() - began)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.dispose()
    return latencies


async def end_to_end(url: str, questions: int, tmp: str) -> list[float]:
    from pathlib import Path

    latencies: list[float] = []
    zygote = Zygote(Path(tmp) / "zygote.log")
    async with FakeSlack() as slack, FakeOpenAI() as openai:
        processes = Processes(Path(tmp), slack, openai, zygote)
        try:
            web = await processes.start_web("web", url)
            worker = await processes.start("worker", url, TUTOR_POLL_INTERVAL="30", LOG_LEVEL="INFO")
            await processes.wait_logged(worker, "listening for new work")
            await processes.wait_logged(worker, "run-poller", "started")
            await asyncio.sleep(1.0)  # its first claim is behind it: it idles for 15 s now
            for i in range(questions):
                seen = len(openai.requests)
                status = await processes.send(
                    web, as_json(mention(f"Q{i}", ts=new_ts(), channel=f"C{i:05d}"))
                )
                assert status == 200
                acked = time.time()

                def arrived(since: int = seen) -> list[RecordedRequest]:
                    return openai.requests[since:]

                first = await wait_for(arrived, timeout=10, interval=0.001)
                latencies.append(first[0].received_at - acked)
                await asyncio.sleep(0.2)
        finally:
            await processes.aclose()
            zygote.close()
    return latencies


async def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1/test")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--questions", type=int, default=20)
    args = parser.parse_args()
    name = f"bench_handoff_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.postgres)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = args.postgres.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    try:
        await asyncio.to_thread(upgrade, url)
        latencies = await database_latency(url, args.trials)
        p50, p99 = (percentile(latencies, p) * 1000 for p in (50, 99))
        print(f"commit → listener woken ({args.trials} trials): p50 {p50:.2f} ms   p99 {p99:.2f} ms")
        with tempfile.TemporaryDirectory() as tmp:
            latencies = await end_to_end(url, args.questions, tmp)
        p50, p99 = (percentile(latencies, p) * 1000 for p in (50, 99))
        print(
            f"web ack → separate worker's first OpenAI call ({args.questions} questions, worker poll 30 s):"
            f" p50 {p50:.1f} ms   p99 {p99:.1f} ms"
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
