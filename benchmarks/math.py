"""How long display equations take: rendering, and an answer with 10 of them reaching Slack.

    uv run python -m benchmarks.math [--answers 10] [--process-delay 0.5]

Prints: mathtext rendering time per equation (p50/p99 over 30 typical equations, after the
first render of the process, which loads the fonts), and, with `slack-tutor run` as its own
process against the fakes, the time from the bot seeing the model's answer complete (the
retrieve that returned it) to the answer being posted in Slack: 10 formulas rendered, uploaded
unshared, waited on until Slack has processed them, posted as one message. Each answer uses new
formulas, so nothing comes from a cache. `--process-delay` is how long the fake Slack takes to
process an upload (real Slack: about a second, python-slack-sdk#1521).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.events import percentile, serving
from bot.math_images import render_sync
from db.migrate import upgrade
from tests.fakes import FakeOpenAI, FakeSlack, Turn
from tests.slack_payloads import CHANNEL, as_json, mention, new_ts, signed_headers

TYPICAL = [
    r"x = \frac{-b \pm \sqrt{b^2-4ac}}{2a}",
    r"\int_0^1 x^2\,dx = \frac{1}{3}",
    r"\sum_{n=1}^{\infty} \frac{1}{n^2} = \frac{\pi^2}{6}",
    r"\lim_{x \to 0} \frac{\sin x}{x} = 1",
    r"e^{i\pi} + 1 = 0",
    r"\frac{d}{dx} x^n = n x^{n-1}",
    r"\int e^{x} \sin x \, dx = \frac{e^x(\sin x - \cos x)}{2} + C",
    r"a^2 + b^2 = c^2",
    r"\sqrt{\frac{a+b}{2}} \geq \sqrt{ab}",
    r"f(x) = \sum_{k=0}^{\infty} \frac{f^{(k)}(0)}{k!} x^k",
    r"\binom{n}{k} = \frac{n!}{k!(n-k)!}",
    r"P(A \mid B) = \frac{P(B \mid A) P(A)}{P(B)}",
    r"\bar{x} = \frac{1}{n}\sum_{i=1}^{n} x_i",
    r"\sigma = \sqrt{\frac{1}{n}\sum_{i=1}^{n}(x_i - \mu)^2}",
    r"\nabla \cdot \vec{E} = \frac{\rho}{\varepsilon_0}",
    r"\oint_C \vec{F} \cdot d\vec{r} = \iint_S (\nabla \times \vec{F}) \cdot d\vec{S}",
    r"3x + 11 = 14 \Rightarrow 3x = 3 \Rightarrow x = 1",
    r"\log_b(xy) = \log_b x + \log_b y",
    r"\sin^2\theta + \cos^2\theta = 1",
    r"\frac{1}{1-x} = \sum_{n=0}^{\infty} x^n, \quad |x| < 1",
    r"\int_{-\infty}^{\infty} e^{-x^2}\,dx = \sqrt{\pi}",
    r"\det(A - \lambda I) = 0",
    r"F = G\frac{m_1 m_2}{r^2}",
    r"\mathrm{H_2SO_4} + 2\,\mathrm{NaOH} \rightarrow \mathrm{Na_2SO_4} + 2\,\mathrm{H_2O}",
    r"y - y_1 = m(x - x_1)",
    r"\frac{\partial^2 u}{\partial t^2} = c^2 \frac{\partial^2 u}{\partial x^2}",
    r"\prod_{p\ \mathrm{prime}} \frac{1}{1-p^{-s}} = \zeta(s)",
    r"A = \pi r^2",
    r"\left( \frac{x}{2} \right)^3 = \frac{x^3}{8}",
    r"\cos(\alpha + \beta) = \cos\alpha\cos\beta - \sin\alpha\sin\beta",
]


def rendering_times() -> tuple[float, list[float]]:
    began = time.perf_counter()
    render_sync(r"\alpha")  # the process's first render loads the fonts
    first = time.perf_counter() - began
    times: list[float] = []
    for latex in TYPICAL:
        began = time.perf_counter()
        assert render_sync(latex) is not None, latex
        times.append(time.perf_counter() - began)
    return first, times


def ten_equations(seed: int) -> str:
    steps = [f"Step {i + 1}:\n\n$$ {_varied(latex, seed)} $$" for i, latex in enumerate(TYPICAL[:10])]
    return "Here is the worked solution.\n\n" + "\n\n".join(steps)


def _varied(latex: str, seed: int) -> str:
    """The same kind of equation with a different number: a new formula, no cache hit."""
    return f"{latex} \\quad ({seed})"


async def completion_to_visible(
    endpoint: str, slack: FakeSlack, openai: FakeOpenAI, answers: int
) -> list[float]:
    import aiohttp

    durations: list[float] = []
    async with aiohttp.ClientSession() as http:
        for number in range(answers):
            slack.clear()
            openai.clear()
            openai.queue(Turn(text=ten_equations(number), code=None))
            ts = new_ts()
            body = as_json(mention("Walk me through it", ts=ts))
            async with http.post(endpoint, data=body.encode(), headers=signed_headers(body)) as response:
                assert response.status == 200
            deadline = time.monotonic() + 60
            while not slack.messages(CHANNEL, ts):
                if time.monotonic() > deadline:
                    raise RuntimeError("no answer within 60 s")
                await asyncio.sleep(0.002)
            (post,) = slack.messages(CHANNEL, ts)
            assert sum(block["type"] == "image" for block in post["blocks"]) == 10, post["blocks"]
            retrieves = [c for c in openai.calls("GET /v1/responses/") if c.path.count("/") == 3]
            posted = [c for c in slack.calls("chat.postMessage") if c.status == 200]
            durations.append(posted[-1].received_at - retrieves[-1].received_at)
    return durations


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--answers", type=int, default=10)
    parser.add_argument("--process-delay", type=float, default=None, help="default: 0 and 0.5")
    args = parser.parse_args()

    first, times = rendering_times()
    print(
        f"mathtext rendering, {len(times)} typical equations "
        f"(the process's first render, loading fonts: {first * 1000:.0f} ms):"
    )
    p50, p99 = (percentile(times, p) * 1000 for p in (50, 99))
    print(f"  p50 {p50:.1f} ms   p99 {p99:.1f} ms   max {max(times) * 1000:.1f} ms")

    delays = [args.process_delay] if args.process_delay is not None else [0.0, 0.5]
    with tempfile.TemporaryDirectory() as tmp:
        for delay in delays:
            url = f"sqlite+aiosqlite:///{Path(tmp) / f'math-{delay}.db'}"
            await asyncio.to_thread(upgrade, url)
            async with FakeSlack() as slack, FakeOpenAI() as openai:
                slack.process_delay = delay
                async with serving("run", url, slack, openai) as served:
                    await completion_to_visible(served.endpoint, slack, openai, 1)  # warm-up: imports, fonts
                    durations = await completion_to_visible(served.endpoint, slack, openai, args.answers)
            print(
                f"answer with 10 display equations, model done → posted in Slack "
                f"(uploads processed after {delay:.1f} s), {args.answers} answers:"
            )
            print(f"  median {statistics.median(durations):.2f} s   max {max(durations):.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
