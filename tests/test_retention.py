"""Retention: only what is old is pruned (clock injected), in batches, by one worker at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.retention import LOCK_KEY, Retention
from db import repo
from db.migrate import upgrade
from db.models import Cleanup, Delivery, Document, Run, ThreadFile, TutorThread, VectorStore, utcnow
from db.session import make_engine
from tests.conftest import Bot, BotFactory
from tests.fakes import wait_for
from tests.rows import new_run, new_thread
from tests.slack_payloads import CHANNEL, TEAM, file_share, mention, message, new_ts
from tests.test_documents import WORKSHEET
from tests.test_files import _csv

#: Its PostgreSQL databases start migrated (a copy of conftest's template); upgrade finds nothing to do.
pytestmark = pytest.mark.migrated_postgres

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=utcnow().tzinfo)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=10)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest_asyncio.fixture
async def engine(backend_url: str) -> AsyncIterator[AsyncEngine]:
    await asyncio.to_thread(upgrade, backend_url)
    engine = make_engine(backend_url)
    yield engine
    await engine.dispose()


async def _run(engine: AsyncEngine, thread_id: int, *, status: str, at: datetime, text: str = "Q") -> int:
    return await new_run(engine, thread_id, status=status, at=at, text=text, delivered=True)


async def _count(engine: AsyncEngine, model: Any, *where: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_only_what_is_old_is_pruned_in_batches(engine: AsyncEngine) -> None:
    thread = await new_thread(engine)
    old = [await _run(engine, thread, status="done", at=OLD, text=f"old secret {i}") for i in range(5)]
    old.append(await _run(engine, thread, status="failed", at=OLD))
    recent = await _run(engine, thread, status="done", at=RECENT)
    # Old but unfinished (a question still being answered, however long ago it came): kept.
    stuck = await _run(engine, thread, status="polling", at=OLD)
    async with engine.begin() as connection:
        await connection.execute(
            insert(ThreadFile).values(
                thread_id=thread,
                run_id=old[0],
                team_id="T1",
                slack_file_id="F1",
                name="data.csv",
                slack_meta={},
            )
        )
        await connection.execute(
            insert(Cleanup),
            [
                {"kind": "file", "object_id": "file-old", "next_attempt_at": OLD, "done_at": OLD},
                {"kind": "file", "object_id": "file-new", "next_attempt_at": RECENT, "done_at": RECENT},
                {"kind": "file", "object_id": "file-pending", "next_attempt_at": OLD, "done_at": None},
            ],
        )

    deletes: list[str] = []

    def count_deletes(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM RUNS"):
            deletes.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count_deletes)
    try:
        pruned = await Retention(engine, days=30, clock=lambda: NOW, batch=2).prune()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count_deletes)

    assert (pruned.runs, pruned.cleanups, pruned.ran) == (6, 1, True)
    assert len(deletes) == 3  # 2 + 2 + 2; the next batch finds nothing to delete, and is the last
    assert await _count(engine, Run, Run.id.in_(old)) == 0
    assert await _count(engine, Run, Run.text.like("old secret%")) == 0
    assert await _count(engine, Run, Run.id.in_([recent, stuck])) == 2
    assert await _count(engine, Delivery, Delivery.run_id.in_(old)) == 0  # cascaded
    assert await _count(engine, Delivery, Delivery.run_id.in_([recent, stuck])) == 2
    assert await _count(engine, ThreadFile, ThreadFile.run_id.is_(None)) == 1  # the file stays, unlinked
    objects = await _count(engine, Cleanup, Cleanup.object_id.in_(["file-new", "file-pending"]))
    assert objects == 2 and await _count(engine, Cleanup) == 2

    # Idempotent: a second round finds nothing.
    again = await Retention(engine, days=30, clock=lambda: NOW, batch=2).prune()
    assert (again.runs, again.cleanups) == (0, 0)


@pytest.mark.postgres
async def test_one_worker_at_a_time_prunes(postgres_url: str) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    engine = make_engine(postgres_url)
    try:
        thread = await new_thread(engine)
        await _run(engine, thread, status="done", at=OLD)
        async with engine.connect() as other_worker:
            await other_worker.execute(
                text("SELECT pg_advisory_lock(hashtextextended(:key, 0))"), {"key": LOCK_KEY}
            )
            await other_worker.commit()
            skipped = await Retention(engine, days=30, clock=lambda: NOW).prune()
            assert not skipped.ran and skipped.runs == 0
            assert await _count(engine, Run) == 1
            await other_worker.execute(
                text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"), {"key": LOCK_KEY}
            )
            await other_worker.commit()
        done = await Retention(engine, days=30, clock=lambda: NOW).prune()
        assert done.ran and done.runs == 1
        # The lock is released after a round: the next round (of any worker) can run.
        assert (await Retention(engine, days=30, clock=lambda: NOW).prune()).ran
    finally:
        await engine.dispose()


# End to end: what retention deletes at OpenAI (the fake's state and the DELETEs it received).


async def _backdate(bot: Bot, thread_ts: str, *, days: float) -> int:
    """Make a tutor thread and its runs look `days` old; returns the thread's id."""
    at = utcnow() - timedelta(days=days)
    async with bot.components.sessions.begin() as session:
        thread = await repo.find_thread(session, team_id=TEAM, channel_id=CHANNEL, thread_ts=thread_ts)
        assert thread is not None
        thread.created_at = at
        await session.execute(
            update(Run).where(Run.thread_id == thread.id).values(created_at=at, finished_at=at)
        )
        return thread.id


def _openai_objects(bot: Bot, creates: list[dict[str, Any]]) -> tuple[set[str], set[str], set[str]]:
    """The conversations, responses and containers these creates used."""
    conversations = {c["conversation"] for c in creates}
    containers = {t["container"] for c in creates for t in c["tools"] if t["type"] == "code_interpreter"}
    responses = {r.id for r in bot.openai.responses.values() if r.conversation_id in conversations}
    return conversations, responses, containers


async def test_retention_deletes_an_old_thread_at_openai_and_in_the_database(start_bot: BotFactory) -> None:
    await _old_thread_is_deleted(await start_bot(tutor_document_max_pages=1))


@pytest.mark.postgres
async def test_retention_deletes_an_old_thread_on_postgres(start_bot: BotFactory, postgres_url: str) -> None:
    # PostgreSQL checks column lengths ("vector_store_file" did not fit cleanups.kind before 0011).
    await asyncio.to_thread(upgrade, postgres_url)
    await _old_thread_is_deleted(await start_bot(url=postgres_url, tutor_document_max_pages=1))


async def _old_thread_is_deleted(bot: Bot) -> None:
    """An old thread (a question, then a CSV and a PDF that goes to the thread's vector store) and a
    recent one; retention deletes the old one's at OpenAI and in the database, and nothing else."""
    old_ts = new_ts()
    await bot.send(mention("What is 1 + 1?", ts=old_ts))
    await bot.wait_runs_finished(1)
    pdf = bot.slack.host_file("worksheet.pdf", WORKSHEET, "application/pdf")
    await bot.send(file_share("<@U0TUTORBOT> plot this and read that", [_csv(bot), pdf], thread_ts=old_ts))
    await bot.wait_runs_finished(2)
    old_creates = [c.json for c in bot.openai.calls("POST /v1/responses$")]
    old_files = set(bot.openai.files)
    (old_store,) = bot.openai.vector_stores
    recent_ts = new_ts()
    await bot.send(mention("What is 2 + 2?", ts=recent_ts))
    await bot.wait_runs_finished(3)
    recent_creates = [c.json for c in bot.openai.calls("POST /v1/responses$")][len(old_creates) :]
    conversations, responses, containers = _openai_objects(bot, old_creates)
    (conversation,) = conversations
    items = [i["id"] for i in bot.openai.conversations[conversation].items]
    assert items and len(responses) == 2 and containers and len(old_files) == 2
    old_thread = await _backdate(bot, old_ts, days=40)

    now = utcnow()
    retention = Retention(bot.components.engine, days=30, clock=lambda: now, wake=bot.components.poller.wake)
    pruned = await retention.prune()
    assert (pruned.threads, pruned.runs) == (1, 2)

    expected = (
        {f"/v1/conversations/{conversation}/items/{i}" for i in items}
        | {f"/v1/conversations/{conversation}"}
        | {f"/v1/responses/{r}" for r in responses}
        | {f"/v1/containers/{c}" for c in containers}
        | {f"/v1/files/{f}" for f in old_files}
        | {f"/v1/vector_stores/{old_store}"}
    )
    await wait_for(
        lambda: {c.path for c in bot.openai.calls("DELETE") if c.status in (200, 404)} >= expected,
        message="retention did not delete the old thread's objects at OpenAI",
    )
    state = bot.openai
    assert state.conversations[conversation].deleted and state.conversations[conversation].items == []
    assert all(state.responses[r].deleted for r in responses)
    assert not containers & set(state.containers) and not old_files & set(state.files)
    assert old_store not in state.vector_stores
    # Items first: the conversation is deleted once it is empty.
    paths = [c.path for c in state.calls("DELETE")]
    assert paths.index(f"/v1/conversations/{conversation}") > max(
        paths.index(f"/v1/conversations/{conversation}/items/{i}") for i in items
    )

    # The recent thread is left alone.
    kept_conversations, kept_responses, kept_containers = _openai_objects(bot, recent_creates)
    assert not any(state.conversations[c].deleted for c in kept_conversations)
    assert not any(state.responses[r].deleted for r in kept_responses)
    assert kept_containers <= set(state.containers)
    assert not any(p.startswith(tuple(f"/v1/conversations/{c}" for c in kept_conversations)) for p in paths)

    # In the database: the old thread's questions, deliveries, files and documents are gone.
    assert await _count(bot.components.engine, Run, Run.thread_id == old_thread) == 0
    assert await _count(bot.components.engine, Run) == 1
    assert await _count(bot.components.engine, Delivery, Delivery.run_id.not_in(select(Run.id))) == 0
    assert await _count(bot.components.engine, ThreadFile) == 0
    assert await _count(bot.components.engine, Document) == 0
    assert await _count(bot.components.engine, VectorStore) == 0
    async with bot.components.sessions() as session:
        thread = await session.get(TutorThread, old_thread)
        assert thread is not None and (thread.conversation_id, thread.container_id) == (None, None)

    # A second round finds nothing to do.
    cleanups = await _count(bot.components.engine, Cleanup)
    again = await retention.prune()
    assert (again.threads, again.runs) == (0, 0)
    assert await _count(bot.components.engine, Cleanup) == cleanups

    # A follow-up in the forgotten thread starts fresh (a new conversation and sandbox).
    await bot.send(message("and 3 + 3?", thread_ts=old_ts))
    await bot.wait_runs_finished(2)
    follow_up = bot.openai.calls("POST /v1/responses$")[-1]
    assert follow_up.status == 200 and follow_up.json["conversation"] not in conversations
    assert bot.slack.messages(CHANNEL, old_ts)[-1]["text"]


async def test_old_runs_of_an_active_thread_lose_their_stored_responses_first(bot: Bot) -> None:
    ts = new_ts()
    await bot.send(mention("What is 1 + 1?", ts=ts))
    await bot.wait_runs_finished(1)
    (old_run,) = await bot.runs()
    assert old_run.response_id
    await _backdate(bot, ts, days=40)
    await bot.send(message("and 2 + 2?", thread_ts=ts))  # the thread is active again
    await bot.wait_runs_finished(2)

    now = utcnow()
    retention = Retention(bot.components.engine, days=30, clock=lambda: now, wake=bot.components.poller.wake)
    pruned = await retention.prune()
    assert (pruned.threads, pruned.runs) == (0, 1)
    await wait_for(lambda: bot.openai.responses[old_run.response_id or ""].deleted)
    conversation = bot.openai.calls("POST /v1/responses$")[0].json["conversation"]
    assert not bot.openai.conversations[conversation].deleted  # the thread's memory stays ...

    def texts() -> list[str]:
        items = bot.openai.conversations[conversation].items
        return [p.get("text", "") for i in items if i.get("type") == "message" for p in i["content"]]

    # ... without the old question's turn: its message and its answer's items.
    old_output = {i["id"] for i in bot.openai.responses[old_run.response_id or ""].body["output"]}

    def turn_gone() -> bool:
        ids = {i["id"] for i in bot.openai.conversations[conversation].items}
        return not old_output & ids and not any("What is 1 + 1?" in t for t in texts())

    await wait_for(turn_gone, message="the old question's turn was kept")
    assert any("and 2 + 2?" in t for t in texts())
