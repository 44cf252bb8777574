"""One bad question never takes the questions stored with it down, and is never retried forever."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from bot.files import SharedFile
from bot.inbox import Inbox, Question
from db.migrate import upgrade
from db.models import Run, ThreadFile
from db.session import make_engine, make_sessionmaker
from tests.conftest import Bot, BotFactory
from tests.fakes import wait_for
from tests.slack_payloads import CHANNEL, mention, new_ts

#: Its PostgreSQL databases start migrated (a copy of conftest's template); upgrade finds nothing to do.
pytestmark = pytest.mark.migrated_postgres

GOOD = 15


async def _send_together(bot: Bot, payloads: list[dict[str, Any]]) -> list[int]:
    return [status for status, _ in await asyncio.gather(*(bot.send(p) for p in payloads))]


def _stored(runs: list[Run]) -> set[str]:
    return {run.message_ts for run in runs}


@pytest.fixture
async def pg_bot(postgres_url: str, start_bot: BotFactory) -> Bot:
    await asyncio.to_thread(upgrade, postgres_url)
    return await start_bot(url=postgres_url)


@pytest.mark.postgres
async def test_a_nul_byte_in_one_question_does_not_fail_the_others(pg_bot: Bot) -> None:
    bot = pg_bot
    good = [mention(f"what is {n} + {n}?") for n in range(GOOD)]
    odd = mention("what is 2\x00 + 2?")
    statuses = await _send_together(bot, [*good, odd])
    assert statuses == [200] * (GOOD + 1)
    runs = await bot.wait_runs_finished(GOOD + 1, within=60)
    assert _stored(runs) == {p["event"]["ts"] for p in [*good, odd]}
    (stored_odd,) = [r for r in runs if r.message_ts == odd["event"]["ts"]]
    assert stored_odd.text == "what is 2 + 2?"  # the NUL is dropped, the question kept
    assert all(r.status == "done" for r in runs)
    assert all(bot.slack.messages(CHANNEL, p["event"]["ts"]) for p in [*good, odd])


@pytest.mark.postgres
@pytest.mark.parametrize(
    "poison",
    [
        pytest.param({"channel": "C" + "X" * 39}, id="channel-id-40-chars"),
        pytest.param({"channel": "C0MA\x00TH"}, id="nul-in-channel-id"),
        pytest.param({"user": "U" * 33}, id="user-id-too-long"),
    ],
)
async def test_a_poison_question_fails_alone_and_is_acked(
    pg_bot: Bot, poison: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    bot = pg_bot
    good = [mention(f"what is {n} squared?") for n in range(GOOD)]
    bad = mention("what is 7 squared?")
    bad["event"].update(poison)
    with caplog.at_level(logging.INFO, logger="bot"):
        statuses = await _send_together(bot, [*good, bad])
        # 200 for the poison too: Slack would otherwise retry it for hours.
        assert statuses == [200] * (GOOD + 1)
        runs = await bot.wait_runs_finished(GOOD, within=60)
    assert _stored(runs) == {p["event"]["ts"] for p in good}
    assert all(bot.slack.messages(CHANNEL, p["event"]["ts"]) for p in good)
    # The reason is logged (by whichever layer refuses it) in one line, without a traceback.
    said = [r for r in caplog.records if r.name.startswith("bot") and r.levelno >= logging.WARNING]
    assert said and all(r.exc_info is None and "\n" not in r.getMessage() for r in said)


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


def _question(text: str = "what is 3 + 4?", **fields: Any) -> Question:
    ts = new_ts()
    values: dict[str, Any] = {
        "team_id": "T0001",
        "channel_id": CHANNEL,
        "message_ts": ts,
        "thread_key": ts,
        "reply_thread_ts": ts,
        "user_id": "U0ALICE",
        "text": text,
        "is_mention": True,
        "is_dm": False,
        "event_id": f"Ev{ts}",
    }
    values.update(fields)
    return Question(**values)


async def _runs(sessions: async_sessionmaker[AsyncSession]) -> list[Run]:
    async with sessions() as session:
        return list((await session.scalars(select(Run).order_by(Run.id))).all())


async def test_inbox_stores_the_good_questions_of_a_batch_with_a_poison_one(
    sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox(sessions)
    good = [_question() for _ in range(GOOD)]
    poison = _question(channel_id="C" * 40)
    with caplog.at_level(logging.INFO, logger="bot.inbox"):
        results = await asyncio.gather(*(inbox.store(q) for q in [*good[:7], poison, *good[7:]]))
    assert results == [True] * 7 + [False] + [True] * (GOOD - 7)
    assert _stored(await _runs(sessions)) == {q.message_ts for q in good}
    (line,) = [r for r in caplog.records if "not stored" in r.getMessage()]
    assert line.exc_info is None and "channel_id" in line.getMessage() and "\n" not in line.getMessage()


async def test_inbox_cleans_what_the_database_cannot_hold(sessions: async_sessionmaker[AsyncSession]) -> None:
    inbox = Inbox(sessions)
    shared = SharedFile.from_slack(
        {
            "id": "F0DATA1",
            "name": "da\x00ta-" + "x" * 300 + ".csv",
            "filetype": "csv",
            "mimetype": "text/csv",
            "size": 10,
            "title": "surrogate \ud800 here",
        }
    )
    bogus = SharedFile.from_slack({"id": "F" * 40, "name": "bogus.csv"})
    question = _question("a\x00b \udcff c", files=(shared, bogus), event_id="E" * 100)
    assert await inbox.store(question)
    (run,) = await _runs(sessions)
    assert run.text == "ab \ufffd c" and run.event_id is None
    async with sessions() as session:
        (file,) = (await session.scalars(select(ThreadFile))).all()
    assert file.slack_file_id == "F0DATA1"  # the file with an impossible id is dropped
    assert "\x00" not in file.name and len(file.name) <= 255 and file.name.startswith("data-")
    assert file.slack_meta["title"] == "surrogate \ufffd here"


async def test_inbox_retries_a_failed_batch_one_by_one(sessions: async_sessionmaker[AsyncSession]) -> None:
    """A rejection nobody foresaw (here a trigger) fails only the question it is about."""
    async with sessions.begin() as session:
        await session.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON runs WHEN NEW.text = 'refused' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the database'); END"
            )
        )
    inbox = Inbox(sessions)
    good = [_question() for _ in range(GOOD)]
    refused = _question("refused")
    results = await asyncio.gather(*(inbox.store(q) for q in [refused, *good]))
    assert results == [False] + [True] * GOOD
    assert _stored(await _runs(sessions)) == {q.message_ts for q in good}


@pytest.mark.postgres
async def test_inbox_retries_a_failed_batch_one_by_one_on_postgres(postgres_url: str) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    engine = make_engine(postgres_url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions.begin() as session:
            await session.execute(
                text(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF NEW.text = 'refused' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END IF; "
                    "RETURN NEW; END $$"
                )
            )
            await session.execute(
                text("CREATE TRIGGER refuse BEFORE INSERT ON runs FOR EACH ROW EXECUTE FUNCTION refuse()")
            )
        inbox = Inbox(sessions)
        good = [_question() for _ in range(GOOD)]
        results = await asyncio.gather(
            *(inbox.store(q) for q in [*good[:3], _question("refused"), *good[3:]])
        )
        assert results == [True] * 3 + [False] + [True] * (GOOD - 3)
        assert _stored(await _runs(sessions)) == {q.message_ts for q in good}
    finally:
        await engine.dispose()


async def test_inbox_raises_when_the_database_is_down(database_url: str) -> None:
    """An outage is not the question's fault: the caller must answer 503 so Slack retries."""
    path = database_url.removeprefix("sqlite+aiosqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database: "database is locked"
    engine = create_async_engine(database_url, connect_args={"timeout": 0.05})
    try:
        inbox = Inbox(make_sessionmaker(engine))
        results = await asyncio.gather(*(inbox.store(_question()) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, OperationalError) for r in results), results
    finally:
        await engine.dispose()
        blocker.close()


@pytest.mark.postgres
async def test_inbox_raises_when_postgres_is_unreachable() -> None:
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:9/nothing")
    try:
        inbox = Inbox(make_sessionmaker(engine))
        with pytest.raises(OSError):
            await inbox.store(_question())
    finally:
        await engine.dispose()


async def test_a_poison_question_is_acked_and_the_rest_answered_over_http(bot: Bot) -> None:
    good = [mention(f"what is {n} cubed?") for n in range(3)]
    bad = mention("what is 2 cubed?", channel="C" + "Y" * 40)
    assert await _send_together(bot, [*good, bad]) == [200] * 4
    runs = await bot.wait_runs_finished(3)
    assert _stored(runs) == {p["event"]["ts"] for p in good}
    await wait_for(lambda: all(bot.slack.messages(CHANNEL, p["event"]["ts"]) for p in good))
