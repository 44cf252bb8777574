"""A shared file that lies about itself costs the tutor little, and never silences the question."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from tests.conftest import Bot
from tests.fakes import FakeSlack, Turn
from tests.fakes._recording import recorded
from tests.slack_payloads import CHANNEL, file_share, new_ts

ANNOUNCED = 1024
SERVED = 80 << 20
MB = 1 << 20


class MeteredSlack(FakeSlack):
    """The fake Slack, whose file host counts the bytes it got out before the client hung up,
    and can leave out Content-Length (chunked), as a proxy might."""

    def __init__(self) -> None:
        super().__init__()
        self.served: dict[str, int] = {}
        self.send_length = True

    async def _download(self, request: web.Request) -> web.StreamResponse:
        fid = request.match_info["team_file"].partition("-")[2]
        hosted = self.hosted_files.get(fid)
        if hosted is None or recorded(request).bearer != self.bot_token:
            return await super()._download(request)
        headers = {"Content-Type": str(hosted.info["mimetype"])}
        if self.send_length:
            headers["Content-Length"] = str(len(hosted.content))
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        self.served[fid] = 0
        view = memoryview(hosted.content)
        try:
            for start in range(0, len(view), 64 * 1024):
                await response.write(bytes(view[start : start + 64 * 1024]))
                self.served[fid] += len(view[start : start + 64 * 1024])
            await response.write_eof()
        except ConnectionError:
            pass  # the client stopped reading: what it got is counted
        return response


@pytest_asyncio.fixture
async def fake_slack() -> AsyncIterator[MeteredSlack]:
    async with MeteredSlack() as slack:
        yield slack


def _lying_csv(slack: FakeSlack, name: str = "small.csv") -> dict[str, Any]:
    """A CSV Slack announces as 1 KB that turns out to be 80 MB."""
    shared = slack.host_file(name, b"x,y\n" * (SERVED // 4), "text/csv")
    shared["size"] = ANNOUNCED
    slack.hosted_files[shared["id"]].info["size"] = ANNOUNCED
    return shared


@pytest.mark.parametrize("send_length", [True, False], ids=["content-length", "chunked"])
async def test_a_file_larger_than_announced_is_cut_off_and_said_so(bot: Bot, send_length: bool) -> None:
    slack = bot.slack
    assert isinstance(slack, MeteredSlack)
    slack.send_length = send_length
    shared = _lying_csv(slack)
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> what is the mean of y? Also, what is 2 + 2?", [shared], ts=ts))
    (run,) = await bot.wait_runs_finished(1, within=30)
    assert run.status == "done"

    # Far below the 50 MB cap: what the file host got out is at most socket buffers beyond 1 KB.
    assert slack.served[shared["id"]] < 16 * MB
    texts = [m["text"] for m in slack.messages(CHANNEL, ts)]
    assert texts[0] == (
        "`small.csv` turned out larger than Slack said it was, so I stopped downloading it. "
        "Please share it again."
    )
    assert len(texts) == 2  # and the question is still answered
    assert bot.openai.calls("POST /v1/files") == []
    (create,) = bot.openai.calls("POST /v1/responses$")
    assert "2 + 2" in create.json["input"][0]["content"][0]["text"]


async def test_a_file_of_the_announced_size_still_goes_through(bot: Bot) -> None:
    data = b"x,y\n" + b"1,2\n" * 10_000
    shared = bot.slack.host_file("exact.csv", data, "text/csv")
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> plot y", [shared], ts=ts))
    await bot.wait_runs_finished(1)
    (upload,) = bot.openai.calls("POST /v1/files")
    assert upload.files["file"].content == data


@pytest.mark.parametrize(
    "bad",
    [
        {"size": "big"},
        {"size": None},
        {"size": -5},
        {"size": 1e300},
        {"size": [1]},
        {"name": {"evil": True}},
        {"name": 42, "title": ["x"]},
        {"filetype": 7, "mimetype": {"a": 1}},
    ],
)
async def test_a_file_object_of_the_wrong_shape_does_not_stop_the_question(
    bot: Bot, bad: dict[str, Any]
) -> None:
    bot.openai.queue(Turn(text="2 + 2 = 4."))
    ts = new_ts()
    status, _ = await bot.send(file_share("<@U0TUTORBOT> what is 2 + 2?", [{"id": "F1", **bad}], ts=ts))
    assert status == 200
    (run,) = await bot.wait_runs_finished(1)
    assert run.status == "done"
    texts = [m["text"] for m in bot.slack.messages(CHANNEL, ts)]
    assert texts[-1] == "2 + 2 = 4."
