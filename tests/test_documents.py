"""Documents the tutor reads: a PDF shared with a question is read page by page (small) or
searched in the thread's vector store (large), and the answer names its source."""

from __future__ import annotations

import io

from bot.documents import Source, count_pages, sources_line, strip_citation_markers
from tests.conftest import Bot, BotFactory
from tests.fakes import wait_for
from tests.fakes.documents import pdf_bytes, pdf_text
from tests.slack_payloads import CHANNEL, file_share, mention, new_ts

WORKSHEET = pdf_bytes(
    ["Worksheet 3: fractions", "1. Add 1/2 and 1/3."],
    ["Tutoring code: ZEBRA-42", "Bring this sheet to the session."],
)
QUESTION = "<@U0TUTORBOT> What is the tutoring code in this document?"


def _answers(bot: Bot, ts: str) -> list[str]:
    return [m["text"] for m in bot.slack.messages(CHANNEL, ts)]


def test_the_test_pdf_is_a_real_two_page_pdf() -> None:
    assert count_pages("pdf", "worksheet.pdf", io.BytesIO(WORKSHEET), len(WORKSHEET)) == 2
    assert "Tutoring code: ZEBRA-42" in pdf_text(WORKSHEET).splitlines()


def test_pages_of_text_are_estimated_and_broken_documents_are_unknown() -> None:
    assert count_pages("text", "notes.txt", io.BytesIO(b"x" * 7000), 7000) == 3
    assert count_pages("pdf", "broken.pdf", io.BytesIO(b"%PDF-1.4 garbage"), 16) is None


def test_citation_markers_are_removed_and_sources_link_to_slack() -> None:
    assert strip_citation_markers("x = 4 【4:0†notes.pdf】.") == "x = 4."
    assert strip_citation_markers("see \ue200filecite\ue202turn0file0\ue201 here") == "see  here"
    line = sources_line(
        [Source("algebra-notes.pdf", "https://example.slack.com/files/U1/F1/a.pdf"), Source("b<c>")]
    )
    assert line == "Sources: *<https://example.slack.com/files/U1/F1/a.pdf|algebra-notes.pdf>*, *b&lt;c&gt;*"


async def test_a_small_pdf_is_shown_to_the_model_and_the_answer_comes_from_its_page(bot: Bot) -> None:
    bot.openai.answer_from_documents()
    shared = bot.slack.host_file("worksheet.pdf", WORKSHEET, "application/pdf")
    ts = new_ts()
    await bot.send(file_share(QUESTION, [shared], ts=ts))
    await bot.wait_runs_finished(1)

    (upload,) = bot.openai.calls("POST /v1/files")
    file_id = next(iter(bot.openai.files))
    assert upload.files["file"].content == WORKSHEET
    (create,) = [c.json for c in bot.openai.calls("POST /v1/responses$")]
    parts = create["input"][0]["content"]
    assert {"type": "input_file", "file_id": file_id} in parts
    assert not any(t["type"] == "file_search" for t in create["tools"])  # small: read, not searched
    assert "worksheet.pdf" in create["instructions"]
    assert bot.openai.calls("/v1/vector_stores") == []

    (answer,) = _answers(bot, ts)
    assert "ZEBRA-42" in answer
    assert f"Sources: *<{shared['permalink']}|worksheet.pdf>*" in answer


async def test_a_large_pdf_is_indexed_in_the_threads_store_and_searched(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_document_max_pages=1)
    bot.openai.answer_from_documents()
    bot.openai.index_polls = 3
    shared = bot.slack.host_file("worksheet.pdf", WORKSHEET, "application/pdf")
    ts = new_ts()
    await bot.send(file_share(QUESTION, [shared], ts=ts))
    await bot.wait_runs_finished(1)

    file_id = next(iter(bot.openai.files))
    (store,) = bot.openai.vector_stores.values()
    (batch,) = bot.openai.calls("POST /v1/vector_stores/")
    assert batch.path.endswith("/file_batches") and batch.json["file_ids"] == [file_id]
    (create,) = [c.json for c in bot.openai.calls("POST /v1/responses$")]
    assert {"type": "file_search", "vector_store_ids": [store.id]} in create["tools"]
    assert not any(p["type"] == "input_file" for p in create["input"][0]["content"])
    # The run waited for indexing and said so in the thread status.
    statuses = [
        c.form.get("status") or (c.json or {}).get("status")
        for c in bot.slack.calls("assistant.threads.setStatus")
    ]
    assert any(s and s.startswith("is reading worksheet.pdf") for s in statuses), statuses
    assert len(bot.openai.calls("GET /v1/vector_stores/")) >= 3

    (answer,) = _answers(bot, ts)
    assert "ZEBRA-42" in answer
    assert "【" not in answer and "†" not in answer  # the model's raw citation marker is gone
    assert f"Sources: *<{shared['permalink']}|worksheet.pdf>*" in answer


async def test_reset_forgets_the_threads_documents_at_openai(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_document_max_pages=1)
    bot.openai.answer_from_documents()
    shared = bot.slack.host_file("worksheet.pdf", WORKSHEET, "application/pdf")
    ts = new_ts()
    await bot.send(file_share(QUESTION, [shared], ts=ts))
    await bot.wait_runs_finished(1)
    (store,) = bot.openai.vector_stores.values()
    file_id = next(iter(bot.openai.files))

    await bot.send(mention("<@U0TUTORBOT> reset", thread_ts=ts))
    await wait_for(lambda: not bot.openai.vector_stores and not bot.openai.files, message="thread store left")
    assert f"/v1/vector_stores/{store.id}" in [c.path for c in bot.openai.calls("DELETE /v1/vector_stores")]
    assert [c.path for c in bot.openai.calls("DELETE /v1/files")] == [f"/v1/files/{file_id}"]  # once


async def test_a_large_document_openai_cannot_index_gets_one_sentence(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_document_max_pages=1)
    bot.openai.unindexable = {"scan.pdf"}
    shared = bot.slack.host_file("scan.pdf", WORKSHEET, "application/pdf")
    ts = new_ts()
    await bot.send(file_share(QUESTION, [shared], ts=ts))
    await bot.wait_runs_finished(1)
    notice, answer = _answers(bot, ts)
    assert notice.startswith("OpenAI couldn't index `scan.pdf` for searching")
    create = bot.openai.calls("POST /v1/responses$")[0].json
    assert not any(t["type"] == "file_search" for t in create["tools"])  # nothing in the store to search
    assert answer


async def test_the_wait_for_indexing_is_bounded(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_document_max_pages=1, tutor_index_wait=0.5)
    bot.openai.index_polls = 10_000  # never finishes
    shared = bot.slack.host_file("worksheet.pdf", WORKSHEET, "application/pdf")
    ts = new_ts()
    await bot.send(file_share(QUESTION, [shared], ts=ts))
    (run,) = await bot.wait_runs_finished(1)
    assert run.status == "done"
    (create,) = [c.json for c in bot.openai.calls("POST /v1/responses$")]  # answered without waiting more
    (store,) = bot.openai.vector_stores
    assert {"type": "file_search", "vector_store_ids": [store]} in create["tools"]  # what is indexed by then
