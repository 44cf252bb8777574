"""The main paths again on PostgreSQL, the multi-process production database."""

from __future__ import annotations

import asyncio

import pytest

from db.migrate import upgrade
from tests.conftest import Bot, BotFactory
from tests.fakes import Chart, Turn
from tests.slack_payloads import CHANNEL, file_share, mention, message, new_ts, slash_command
from tests.test_files import _csv

#: Their databases start migrated (a copy of conftest's template); their own upgrade finds nothing to do.
pytestmark = [pytest.mark.postgres, pytest.mark.migrated_postgres]


@pytest.fixture
async def pg_bot(start_bot: BotFactory, postgres_url: str) -> Bot:
    await asyncio.to_thread(upgrade, postgres_url)
    return await start_bot(url=postgres_url)


async def test_mention_follow_up_and_duplicates(pg_bot: Bot) -> None:
    bot = pg_bot
    ts = new_ts()
    first = mention("I need to solve the equation 3x + 11 = 14. Can you help me?", ts=ts)
    await asyncio.gather(bot.send(first), bot.send(first, retry_num=1))
    await bot.wait_runs_finished(1)
    await bot.send(message("and 3x + 11 = 20?", thread_ts=ts))
    await bot.wait_runs_finished(2)
    creates = bot.openai.calls("POST /v1/responses$")
    assert len(creates) == 2 and creates[0].json["conversation"] == creates[1].json["conversation"]
    assert len(bot.slack.messages(CHANNEL, ts)) == 2


async def test_csv_analysis_and_reset(pg_bot: Bot) -> None:
    bot = pg_bot
    bot.openai.queue(Turn(text="Trends.", charts=[Chart("a.png"), Chart("b.png"), Chart("c.png")]))
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> Create 3 data visualizations", [_csv(bot)], ts=ts))
    await bot.wait_runs_finished(1)
    assert [u.filename for u in bot.slack.uploads] == ["a.png", "b.png", "c.png"]
    status, body = await bot.send_form(slash_command("reset", response_url=bot.slack.response_url()))
    assert status == 200 and "Reset 1 tutor thread" in body


async def test_library_and_documents(pg_bot: Bot) -> None:
    from tests.test_documents import QUESTION, WORKSHEET
    from tests.test_library import _command, _host

    bot = pg_bot
    bot.openai.answer_from_documents()
    notes, glossary = _host(bot)
    added = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> add these to the library", [notes, glossary], ts=added))
    await bot.wait_runs_finished(1)
    assert bot.slack.messages(CHANNEL, added)[0]["text"].startswith(
        "Added to this channel's library: indexed 2"
    )
    await bot.send_form(slash_command("library add", response_url=bot.slack.response_url()))  # a mention wins
    shared = bot.slack.host_file("worksheet.pdf", WORKSHEET, "application/pdf")
    ts = new_ts()
    await bot.send(file_share(QUESTION, [shared], ts=ts))
    await bot.wait_runs_finished(2)
    create = bot.openai.calls("POST /v1/responses$")[-1].json
    assert any(t["type"] == "file_search" for t in create["tools"])
    assert "ZEBRA-42" in bot.slack.messages(CHANNEL, ts)[0]["text"]
    assert "indexed 2 of 2" in (await _command(bot, "library"))["text"]
