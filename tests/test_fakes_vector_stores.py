"""The fake OpenAI's vector stores behave like the real ones for the real SDK: indexing statuses,
file batches, file_search with file_citation annotations."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from tests.fakes import FakeOpenAI
from tests.fakes.documents import pdf_bytes


@pytest_asyncio.fixture
async def oai(fake_openai: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(api_key=fake_openai.api_key, base_url=fake_openai.base_url, max_retries=0)
    yield client
    await client.close()


async def test_indexing_goes_in_progress_then_completed_or_failed(
    fake_openai: FakeOpenAI, oai: AsyncOpenAI
) -> None:
    fake_openai.index_polls = 2
    fake_openai.unindexable = {"scan.pdf"}
    good = await oai.files.create(
        file=("notes.pdf", pdf_bytes(["x"]), "application/pdf"), purpose="user_data"
    )
    bad = await oai.files.create(file=("scan.pdf", pdf_bytes(["y"]), "application/pdf"), purpose="user_data")
    store = await oai.vector_stores.create(name="library", metadata={"scope": "channel:T1:C1"})
    batch = await oai.vector_stores.file_batches.create(store.id, file_ids=[good.id, bad.id])
    assert batch.status == "in_progress" and batch.file_counts.total == 2
    first = {f.id: f.status async for f in oai.vector_stores.files.list(store.id)}
    assert first == {good.id: "in_progress", bad.id: "in_progress"}
    done = {f.id: f async for f in oai.vector_stores.files.list(store.id)}
    assert done[good.id].status == "completed" and done[bad.id].status == "failed"
    assert done[bad.id].last_error is not None and done[bad.id].last_error.code == "unsupported_file"
    again = await oai.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id)
    assert again.status == "completed" and again.file_counts.failed == 1

    await oai.vector_stores.files.delete(good.id, vector_store_id=store.id)
    assert [f.id async for f in oai.vector_stores.files.list(store.id)] == [bad.id]
    deleted = await oai.vector_stores.delete(store.id)
    assert deleted.deleted and fake_openai.vector_stores == {}


async def test_file_search_cites_the_file_it_answers_from(fake_openai: FakeOpenAI, oai: AsyncOpenAI) -> None:
    fake_openai.answer_from_documents()
    notes = await oai.files.create(
        file=("notes.pdf", pdf_bytes(["Chapter 1"], ["The tutoring code is OTTER-7."]), "application/pdf"),
        purpose="user_data",
    )
    store = await oai.vector_stores.create(name="library")
    await oai.vector_stores.files.create(store.id, file_id=notes.id)
    await oai.vector_stores.files.retrieve(notes.id, vector_store_id=store.id)  # indexed after one look
    conv = await oai.conversations.create()
    created = await oai.responses.create(
        model="gpt-6-luna",
        conversation=conv.id,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is the tutoring code?"}]}],
        tools=[{"type": "file_search", "vector_store_ids": [store.id]}],
        background=True,
        store=True,
    )
    fake_openai.complete(created.id)
    done = await oai.responses.retrieve(created.id)
    assert [item.type for item in done.output] == ["reasoning", "file_search_call", "message"]
    message = done.output[-1]
    assert message.type == "message"
    part = message.content[0]
    assert part.type == "output_text" and "OTTER-7" in part.text
    (citation,) = part.annotations
    assert (
        citation.type == "file_citation" and citation.file_id == notes.id and citation.filename == "notes.pdf"
    )

    with pytest.raises(openai.NotFoundError):
        await oai.responses.create(
            model="gpt-6-luna",
            conversation=conv.id,
            input="again",
            tools=[{"type": "file_search", "vector_store_ids": ["vs_missing"]}],
            background=True,
            store=True,
        )
