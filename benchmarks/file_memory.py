"""Peak memory and throughput of a large file share: Slack download → checks → OpenAI upload.

    uv run python -m benchmarks.file_memory [--mb 200]

The fakes run in this process; the transfer runs in a child process that reports its own
resident memory before the transfer and at its peak, so the fakes' buffers don't count.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time

from bot.ai import OpenAIGateway
from bot.attach import FileAttacher
from bot.files import SharedFile
from bot.slack_api import SlackGateway, make_web_client
from tests.fakes import FakeOpenAI, FakeSlack


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux keeps that across exec,
    so a child would report the RSS of the parent it was forked from."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


async def child(args: argparse.Namespace) -> None:
    slack = SlackGateway(make_web_client(args.token, args.api_url))
    ai = OpenAIGateway(api_key=args.key, base_url=args.openai_url)
    attacher = FileAttacher(sessions=None, ai=ai, slack=slack, max_bytes=(args.mb + 1) << 20)  # type: ignore[arg-type]
    file = SharedFile.from_slack(json.loads(args.file))
    await ai.upload_file("warm-up.csv", io.BytesIO(b"a,b\n1,2\n"), "text/csv")
    baseline = status_mb("VmRSS")
    began = time.perf_counter()
    file_id = (await attacher.transfer(file)).file_id
    elapsed = time.perf_counter() - began
    peak = status_mb("VmHWM")
    await slack.close()
    await ai.close()
    print(json.dumps({"file_id": file_id, "baseline": baseline, "peak": peak, "seconds": elapsed}))


async def parent(args: argparse.Namespace) -> None:
    chunk = b"2021-01-01,Germany,1000,10,900,83200000\n" * 25_000
    content = chunk * (args.mb * (1 << 20) // len(chunk) + 1)
    content = content[: args.mb << 20]
    async with FakeSlack() as slack, FakeOpenAI() as openai:
        shared = slack.host_file("big.csv", content, "text/csv")
        del content
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.file_memory",
            "--child",
            "--mb",
            str(args.mb),
            "--token",
            slack.bot_token,
            "--api-url",
            slack.api_url,
            "--key",
            openai.api_key,
            "--openai-url",
            openai.base_url,
            "--file",
            json.dumps(shared),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        result = json.loads(out.decode().strip().splitlines()[-1])
        stored = openai.files[result["file_id"]]
        assert len(stored.content) == args.mb << 20, "the upload lost bytes"
    growth = result["peak"] - result["baseline"]
    print(f"{args.mb} MB CSV, Slack download → checks → OpenAI Files upload, in one worker process:")
    print(f"  RSS baseline {result['baseline']:.0f} MB, peak {result['peak']:.0f} MB: +{growth:.0f} MB")
    print(f"  {result['seconds']:.1f} s, {args.mb / result['seconds']:.0f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--token", "--api-url", "--key", "--openai-url", "--file"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    asyncio.run(child(args) if args.child else parent(args))


if __name__ == "__main__":
    main()
