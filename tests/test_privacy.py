"""`/tutor forget me` and forgetting a workspace: the database and the fake OpenAI, end to end."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select

from db.models import (
    ChannelSettings,
    Cleanup,
    Document,
    LibraryRequest,
    Run,
    ThreadFile,
    TutorThread,
    VectorStore,
)
from tests.conftest import Bot
from tests.fakes import wait_for
from tests.fakes.openai import ConversationState
from tests.slack_payloads import ALICE, CHANNEL, TEAM, dm, file_share, mention, message, new_ts
from tests.test_commands import _command
from tests.test_files import _csv

BOB = "U0BOB"
OTHER_TEAM = "T0OTHER"


async def _rows(bot: Bot, model: Any, *where: Any) -> list[Any]:
    async with bot.components.sessions() as session:
        return list((await session.scalars(select(model).where(*where))).all())


def _conversation_of(bot: Bot, question: str) -> str:
    (create,) = [
        c.json
        for c in bot.openai.calls("POST /v1/responses$")
        if c.json["input"][0]["content"][0]["text"].endswith(f"] {question}")
    ]
    return str(create["conversation"])


def _response_of(bot: Bot, question: str) -> str:
    (state,) = [
        r
        for r in bot.openai.responses.values()
        if r.request["input"][0]["content"][0]["text"].endswith(f"] {question}")
    ]
    return state.id


def _item_texts(bot: Bot, conversation: str) -> list[str]:
    return [
        part.get("text", "")
        for item in bot.openai.conversations[conversation].items
        if item.get("type") == "message"
        for part in item["content"]
    ]


async def test_forget_me_deletes_the_callers_data_and_not_anyone_elses(bot: Bot) -> None:
    mine = new_ts()  # Alice's thread; Bob asks in it too
    await bot.send(mention("What is 1 + 1?", ts=mine))
    await bot.wait_runs_finished(1)
    await bot.send(file_share("<@U0TUTORBOT> plot this", [_csv(bot)], thread_ts=mine))
    await bot.wait_runs_finished(2)
    await bot.send(message("Bob asks: and 5 + 5?", thread_ts=mine, user=BOB))
    theirs = new_ts()  # Bob's thread; Alice asks in it once
    await bot.send(mention("Bob: what is a prime?", ts=theirs, user=BOB))
    await bot.wait_runs_finished(4)
    await bot.send(message("Alice: is 7 prime?", thread_ts=theirs))
    bobs_only = new_ts()
    await bot.send(mention("Bob: what is 9 squared?", ts=bobs_only, user=BOB))
    await bot.send(dm("Alice: what is a derivative?"))
    await bot.wait_runs_finished(7)
    async with bot.components.sessions.begin() as session:  # a library file Alice added
        await session.execute(
            insert(Document).values(
                scope="channel",
                scope_key=f"channel:{TEAM}:{CHANNEL}",
                team_id=TEAM,
                channel_id=CHANNEL,
                slack_file_id="F0LIB",
                name="syllabus.pdf",
                added_by=ALICE,
                slack_meta={},
            )
        )

    my_conversation = _conversation_of(bot, "What is 1 + 1?")
    dm_conversation = _conversation_of(bot, "Alice: what is a derivative?")
    shared = _conversation_of(bot, "Bob: what is a prime?")
    bobs_conversation = _conversation_of(bot, "Bob: what is 9 squared?")
    my_thread_responses = {
        r.id for r in bot.openai.responses.values() if r.conversation_id == my_conversation
    }
    alice_in_shared = _response_of(bot, "Alice: is 7 prime?")
    alice_items = {i["id"] for i in bot.openai.responses[alice_in_shared].body["output"]}
    bob_in_shared = _response_of(bot, "Bob: what is a prime?")
    (container,) = {
        t["container"]
        for c in bot.openai.calls("POST /v1/responses$")
        if c.json["conversation"] == my_conversation
        for t in c.json["tools"]
        if t["type"] == "code_interpreter"
    }
    (csv_file,) = set(bot.openai.files)

    answer = await _command(bot, "forget me")
    assert "4 of your questions" in answer
    assert "2 tutor threads you started" in answer and "1 file" in answer
    assert "1 question of yours in someone else's thread" in answer
    assert "queued for deletion at OpenAI" in answer
    assert "syllabus.pdf" not in answer and "1 file you added to a channel library" in answer

    gone = (
        {f"/v1/conversations/{my_conversation}", f"/v1/conversations/{dm_conversation}"}
        | {f"/v1/responses/{r}" for r in my_thread_responses | {alice_in_shared}}
        | {f"/v1/containers/{container}", f"/v1/files/{csv_file}"}
        | {f"/v1/conversations/{shared}/items/{i}" for i in alice_items}
    )
    await wait_for(
        lambda: (
            gone <= {c.path for c in bot.openai.calls("DELETE") if c.status in (200, 404)}
            and not any("Alice: is 7 prime?" in t for t in _item_texts(bot, shared))
        ),
        message="forget me did not delete the caller's objects at OpenAI",
    )
    state = bot.openai
    for conversation in (my_conversation, dm_conversation):
        assert state.conversations[conversation].deleted and state.conversations[conversation].items == []
    assert container not in state.containers and csv_file not in state.files
    # Bob's thread keeps its conversation and Bob's turn; Alice's turn is gone from it.
    assert not state.conversations[shared].deleted
    texts = _item_texts(bot, shared)
    assert not any("Alice: is 7 prime?" in t for t in texts)
    assert any("Bob: what is a prime?" in t for t in texts)
    assert not alice_items & {i["id"] for i in state.conversations[shared].items}
    assert not state.responses[bob_in_shared].deleted
    assert not state.conversations[bobs_conversation].deleted
    assert not any(
        c.path.startswith((f"/v1/conversations/{bobs_conversation}", f"/v1/responses/{bob_in_shared}"))
        for c in state.calls("DELETE")
    )

    # The database: nothing of Alice's; Bob's own threads as they were.
    assert await _rows(bot, Run, Run.user_id == ALICE) == []
    threads = {t.thread_ts: t for t in await _rows(bot, TutorThread)}
    assert set(threads) == {theirs, bobs_only}
    assert threads[theirs].conversation_id == shared
    assert [r.text for r in await _rows(bot, Run, Run.thread_id == threads[theirs].id)] == [
        "Bob: what is a prime?"
    ]
    assert await _rows(bot, ThreadFile) == []
    (library_file,) = await _rows(bot, Document)
    assert library_file.name == "syllabus.pdf" and library_file.added_by == ""

    # Bob's threads still answer, with their memory.
    await bot.send(message("Bob: and 11?", thread_ts=theirs, user=BOB))
    await bot.wait_runs_finished(3)
    assert bot.openai.calls("POST /v1/responses$")[-1].json["conversation"] == shared

    # Twice is harmless: nothing is left to forget.
    again = await _command(bot, "forget me")
    assert again.startswith("I keep nothing about you")


async def test_forget_workspace_deletes_only_that_workspace(bot: Bot) -> None:
    ts = new_ts()
    await bot.send(mention("What is 1 + 1?", ts=ts))
    await bot.wait_runs_finished(1)
    await bot.send(file_share("<@U0TUTORBOT> plot this", [_csv(bot)], thread_ts=ts))
    await bot.wait_runs_finished(2)
    await _command(bot, "auto on")
    await _command(bot, "library add")
    conversation = _conversation_of(bot, "What is 1 + 1?")
    responses = {r.id for r in bot.openai.responses.values()}
    (container,) = set(bot.openai.containers)
    (csv_file,) = set(bot.openai.files)

    # Another workspace's thread, with its own objects at OpenAI.
    other = ConversationState(
        id="conv_other", created_at=0, metadata={}, items=[{"id": "msg_o", "type": "x"}]
    )
    bot.openai.conversations[other.id] = other
    other_container = bot.openai.add_container()
    other_file = bot.openai.add_file("other.csv", b"a,b\n1,2\n").id
    async with bot.components.sessions.begin() as session:
        thread = TutorThread(
            team_id=OTHER_TEAM,
            channel_id="C0OTHER",
            thread_ts="1.1",
            conversation_id=other.id,
            container_id=other_container,
        )
        session.add(thread)
        await session.flush()
        session.add(
            Run(
                run_uuid="other-run",
                thread_id=thread.id,
                team_id=OTHER_TEAM,
                channel_id="C0OTHER",
                message_ts="1.1",
                user_id="U0CAROL",
                text="Carol's question",
                response_id="resp_other",
            )
        )
        session.add(
            ThreadFile(
                thread_id=thread.id,
                team_id=OTHER_TEAM,
                slack_file_id="F0OTHER",
                name="other.csv",
                openai_file_id=other_file,
            )
        )
        session.add(ChannelSettings(team_id=OTHER_TEAM, channel_id="C0OTHER", auto_analyse=True))

    privacy = bot.components.tutor.privacy
    forgotten = await privacy.forget_workspace(TEAM)
    assert forgotten.questions == 2 and forgotten.threads == 1
    expected = {
        f"/v1/conversations/{conversation}",
        f"/v1/containers/{container}",
        f"/v1/files/{csv_file}",
    } | {f"/v1/responses/{r}" for r in responses}
    await wait_for(lambda: expected <= {c.path for c in bot.openai.calls("DELETE")})
    assert bot.openai.conversations[conversation].items == []

    for model in (TutorThread, Run, ThreadFile, ChannelSettings, LibraryRequest, Document, VectorStore):
        assert await _rows(bot, model, model.team_id == TEAM) == [], model.__tablename__
    # The other workspace is untouched, in the database and at OpenAI.
    assert [t.conversation_id for t in await _rows(bot, TutorThread)] == [other.id]
    assert [r.text for r in await _rows(bot, Run)] == ["Carol's question"]
    assert len(await _rows(bot, ThreadFile)) == 1 and len(await _rows(bot, ChannelSettings)) == 1
    assert not other.deleted and other.items and other_container in bot.openai.containers
    assert other_file in bot.openai.files
    ours = ("conv_other", other_container, other_file, "resp_other")
    assert not any(any(o in c.path for o in ours) for c in bot.openai.calls("DELETE"))

    # Safe to call twice (the uninstall event may come again).
    async with bot.components.sessions() as session:
        queued = await session.scalar(select(func.count()).select_from(Cleanup))
    again = await privacy.forget_workspace(TEAM)
    assert again.questions == 0 and again.threads == 0
    async with bot.components.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Cleanup)) == queued
