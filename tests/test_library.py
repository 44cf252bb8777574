"""The channel library: course notes added once, searched by every tutor thread of the channel,
cited by name, listed, removed and cleared (deleted at OpenAI)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from db.models import Document
from tests.conftest import Bot
from tests.fakes import wait_for
from tests.fakes.documents import pdf_bytes
from tests.slack_payloads import ALICE, CHANNEL, block_action, file_share, mention, new_ts, slash_command

NOTES = pdf_bytes(["Algebra notes, chapter 2", "The tutoring code for this course is OTTER-7."])
GLOSSARY = b"Glossary\nA monomial is a single term such as 3x.\n"


def _host(bot: Bot) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        bot.slack.host_file("algebra-notes.pdf", NOTES, "application/pdf"),
        bot.slack.host_file("glossary.txt", GLOSSARY, "text/plain"),
    )


async def _command(bot: Bot, text: str) -> Any:
    status, body = await bot.send_form(slash_command(text, response_url=bot.slack.response_url()))
    assert status == 200
    return json.loads(body) if body.startswith("{") else {"text": body}


async def _add_to_library(bot: Bot, files: list[dict[str, Any]]) -> str:
    ts = new_ts()
    await bot.send(file_share("<@U0TUTORBOT> add these to the library", files, ts=ts))
    await wait_for(lambda: bot.slack.messages(CHANNEL, ts), message="no library message")
    return ts


async def _documents(bot: Bot) -> list[Document]:
    async with bot.components.sessions() as session:
        return list((await session.scalars(select(Document).order_by(Document.id))).all())


def _texts(bot: Bot, ts: str) -> list[str]:
    return [m["text"] for m in bot.slack.messages(CHANNEL, ts)]


async def test_library_add_indexes_the_files_and_every_thread_searches_them(bot: Bot) -> None:
    bot.openai.answer_from_documents()
    notes, glossary = _host(bot)
    ts = await _add_to_library(bot, [notes, glossary])
    (added,) = _texts(bot, ts)
    assert added.startswith("Added to this channel's library: indexed 2 of 2 files.")
    assert bot.openai.calls("POST /v1/responses") == []  # adding is not a question
    (store,) = bot.openai.vector_stores.values()
    assert {bot.openai.files[f].filename for f in store.files} == {"algebra-notes.pdf", "glossary.txt"}
    docs = await _documents(bot)
    assert [(d.scope, d.status, d.added_by) for d in docs] == [("channel", "ready", ALICE)] * 2
    assert all(d.openai_file_id and d.vector_store_id == store.id for d in docs)

    # Two other threads of the channel: each searches the library and names the source.
    for number, (question, name, fact) in enumerate(
        [
            ("What is the tutoring code for this course?", "algebra-notes.pdf", "OTTER-7"),
            ("What is a monomial?", "glossary.txt", "single term"),
        ],
        start=2,
    ):
        thread = new_ts()
        await bot.send(mention(f"<@U0TUTORBOT> {question}", ts=thread))
        await bot.wait_runs_finished(number)
        (answer,) = _texts(bot, thread)
        create = bot.openai.calls("POST /v1/responses$")[-1].json
        assert {"type": "file_search", "vector_store_ids": [store.id]} in create["tools"]
        assert "library" in create["instructions"]
        assert answer.startswith(f"From {name}:") and fact in answer and f"|{name}>*" in answer

    # The same file added again is not uploaded twice.
    uploads = len(bot.openai.calls("POST /v1/files"))
    again = await _add_to_library(bot, [notes])
    assert _texts(bot, again)[0].startswith("I found no new file to add")
    assert len(bot.openai.calls("POST /v1/files")) == uploads


async def test_library_lists_removes_and_clears_at_openai(bot: Bot) -> None:
    notes, glossary = _host(bot)
    await _add_to_library(bot, [notes, glossary])
    (store,) = bot.openai.vector_stores.values()
    listed = await _command(bot, "library")
    assert listed["text"].startswith("*This channel's library* (indexed 2 of 2 files)")
    assert "*algebra-notes.pdf* — " in listed["text"] and f"added by <@{ALICE}>" in listed["text"]
    assert listed["text"].count(", indexed") == 2

    glossary_id = next(f for f, s in bot.openai.files.items() if s.filename == "glossary.txt")
    removed = await _command(bot, "library remove glossary.txt")
    assert removed["text"].startswith("Removed `glossary.txt`")
    await wait_for(lambda: glossary_id not in bot.openai.files, message="file not deleted at OpenAI")
    deletes = [c.path for c in bot.openai.calls("DELETE")]
    assert f"/v1/vector_stores/{store.id}/files/{glossary_id}" in deletes
    assert f"/v1/files/{glossary_id}" in deletes
    assert "glossary.txt" not in (await _command(bot, "library"))["text"]
    missing = await _command(bot, "library remove nothing.pdf")
    assert "no `nothing.pdf`" in missing["text"]

    confirm = await _command(bot, "library clear")
    (clear, keep) = confirm["blocks"][1]["elements"]
    assert clear["action_id"] == "tutor_library_clear" and keep["action_id"] == "tutor_library_keep"
    assert bot.openai.vector_stores  # nothing deleted before the press
    press = block_action(
        "tutor_library_clear",
        CHANNEL,
        message_ts=new_ts(),
        thread_ts="",
        response_url=bot.slack.response_url("c"),
    )
    status, _ = await bot.send_form(press)
    assert status == 200
    await wait_for(
        lambda: not bot.openai.vector_stores and not bot.openai.files, message="library left at OpenAI"
    )
    assert bot.slack.responded[-1]["text"] == "Emptied this channel's library: 1 file removed."
    assert await _documents(bot) == []
    assert "empty" in (await _command(bot, "library"))["text"]


async def test_library_add_command_then_sharing_files(bot: Bot) -> None:
    answer = await _command(bot, "library add")
    assert "Share the files" in answer["text"]
    notes, _ = _host(bot)
    ts = new_ts()
    await bot.send(file_share("here are the notes", [notes], ts=ts))
    await wait_for(lambda: bot.slack.messages(CHANNEL, ts), message="no library message")
    assert _texts(bot, ts)[0].startswith("Added to this channel's library: indexed 1 of 1 file.")
    # The request is used up: the next share is not taken into the library.
    other = new_ts()
    await bot.send(file_share("a photo", [bot.slack.host_file("x.txt", b"hello", "text/plain")], ts=other))
    assert len(await _documents(bot)) == 1


async def test_a_file_openai_cannot_index_gets_one_sentence(bot: Bot) -> None:
    bot.openai.unindexable = {"glossary.txt"}
    notes, glossary = _host(bot)
    ts = await _add_to_library(bot, [notes, glossary])
    (message,) = _texts(bot, ts)
    assert message.splitlines()[0].startswith("Added to this channel's library: indexed 1 of 2 files.")
    assert "OpenAI couldn't index `glossary.txt` for searching" in message
    listed = await _command(bot, "library")
    assert "(indexed 1 of 2 files)" in listed["text"] and "OpenAI couldn't index it" in listed["text"]
    assert "*Channel library:* indexed 1 of 2 files" in (await _command(bot, "status"))["text"]


async def test_a_spreadsheet_is_not_put_into_the_library(bot: Bot) -> None:
    sheet = bot.slack.host_file("grades.csv", b"name,grade\nAda,A\n", "text/csv")
    notes, _ = _host(bot)
    ts = await _add_to_library(bot, [sheet, notes])
    (message,) = _texts(bot, ts)
    assert message.startswith("Added to this channel's library: indexed 1 of 1 file.")
    assert "`grades.csv` can't go into the library" in message
    assert {s.filename for s in bot.openai.files.values()} == {"algebra-notes.pdf"}  # never uploaded


async def test_reset_keeps_the_channel_library(bot: Bot) -> None:
    bot.openai.answer_from_documents()
    notes, _ = _host(bot)
    await _add_to_library(bot, [notes])
    (store,) = bot.openai.vector_stores.values()
    thread = new_ts()
    await bot.send(mention("<@U0TUTORBOT> What is the tutoring code for this course?", ts=thread))
    await bot.wait_runs_finished(2)

    answer = await _command(bot, "reset")
    assert "Reset" in answer["text"]
    await wait_for(lambda: bot.openai.calls("DELETE /v1/conversations"), message="reset did not clean up")
    later = new_ts()
    await bot.send(mention("<@U0TUTORBOT> And the tutoring code again?", ts=later))
    await bot.wait_runs_finished(3)
    assert store.id in bot.openai.vector_stores and len(store.files) == 1
    assert not bot.openai.calls("DELETE /v1/vector_stores")
    create = bot.openai.calls("POST /v1/responses$")[-1].json
    assert {"type": "file_search", "vector_store_ids": [store.id]} in create["tools"]
    assert "OTTER-7" in _texts(bot, later)[0]


async def test_add_this_to_the_library_in_the_thread_of_a_shared_file(bot: Bot) -> None:
    notes, _ = _host(bot)
    root = new_ts()
    bot.slack.add_message(CHANNEL, root, "notes for the course", ALICE, files=[notes], subtype="file_share")
    await bot.send(file_share("notes for the course", [notes], ts=root))  # not for the tutor: ignored
    await bot.send(mention("<@U0TUTORBOT> add this to the library", thread_ts=root))
    await wait_for(lambda: any(t.startswith("Added") for t in _texts(bot, root)), message="not added")
    assert [d.name for d in await _documents(bot)] == ["algebra-notes.pdf"]
    assert "indexed 1 of 1 file" in _texts(bot, root)[-1]


async def test_keep_it_leaves_the_library_alone(bot: Bot) -> None:
    notes, _ = _host(bot)
    await _add_to_library(bot, [notes])
    confirm = await _command(bot, "library clear")
    assert confirm["text"].startswith("Remove all 1 file from this channel's library?")
    press = block_action(
        "tutor_library_keep",
        CHANNEL,
        message_ts=new_ts(),
        thread_ts="",
        response_url=bot.slack.response_url("k"),
    )
    assert (await bot.send_form(press))[0] == 200
    await wait_for(lambda: bot.slack.responded, message="no answer to the press")
    assert bot.slack.responded[-1]["text"] == "The library stays as it is."
    assert len(await _documents(bot)) == 1 and bot.openai.vector_stores
    assert not bot.openai.calls("DELETE")
