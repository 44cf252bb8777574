"""The fakes behave like the real services for the real clients (openai SDK, slack_sdk)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from openai.types.responses import Response
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes import Chart, FakeOpenAI, FakeSlack, Turn, png_bytes, wait_for

TERMINAL = {"completed", "failed", "cancelled", "incomplete"}
INCLUDE: list[Any] = ["code_interpreter_call.outputs"]


@pytest_asyncio.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest_asyncio.fixture
async def oai(fake_openai: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(api_key=fake_openai.api_key, base_url=fake_openai.base_url, max_retries=0)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest_asyncio.fixture
async def slack(fake_slack: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url)


async def _create_run(oai: AsyncOpenAI, conv_id: str, container_id: str, text: str) -> Response:
    return await oai.responses.create(
        model="gpt-6-luna",
        conversation=conv_id,
        instructions="You are a patient math tutor.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": text}]}],
        tools=[{"type": "code_interpreter", "container": container_id}],
        include=["code_interpreter_call.outputs"],
        background=True,
        store=True,
        metadata={"tutor_run": "run-1"},
    )


async def _poll(oai: AsyncOpenAI, response_id: str) -> Response:
    async def finished() -> Response | None:
        response = await oai.responses.retrieve(response_id, include=INCLUDE)
        return response if response.status in TERMINAL else None

    result: Response = await wait_for(finished, timeout=5.0, interval=0.0)
    return result


async def test_background_run_writes_chart_into_container(fake_openai: FakeOpenAI, oai: AsyncOpenAI) -> None:
    conv = await oai.conversations.create(metadata={"team": "T0001", "channel": "C0MATH"})
    uploaded = await oai.files.create(
        file=("covid.csv", b"week,cases\n1,10\n2,20\n", "text/csv"), purpose="user_data"
    )
    container = await oai.containers.create(
        name="slack-tutor T0001:C0MATH:1.2",
        expires_after={"anchor": "last_active_at", "minutes": 20},
        file_ids=[uploaded.id],
    )
    fake_openai.queue(Turn(text="Here is the chart:", charts=[Chart("weekly_cases.png")]))

    created = await _create_run(oai, conv.id, container.id, "Plot cases per week")
    first = await oai.responses.retrieve(created.id, include=INCLUDE)
    final = await _poll(oai, created.id)

    assert uploaded.bytes == 21 and uploaded.purpose == "user_data"
    assert fake_openai.files[uploaded.id].content_type == "text/csv"
    assert (created.status, first.status, final.status) == ("queued", "in_progress", "completed")
    assert final.conversation is not None and final.conversation.id == conv.id
    assert final.metadata == {"tutor_run": "run-1"}
    assert [item.type for item in final.output] == [
        "reasoning",
        "code_interpreter_call",
        "message",
    ]
    message = final.output[2]
    assert message.type == "message"
    part = message.content[0]
    assert part.type == "output_text"
    citation = part.annotations[0]
    assert citation.type == "container_file_citation"
    assert citation.container_id == container.id and citation.filename == "weekly_cases.png"
    assert part.text[citation.start_index : citation.end_index] == (
        "[weekly_cases.png](sandbox:/mnt/data/weekly_cases.png)"
    )
    chart = await oai.containers.files.content.retrieve(citation.file_id, container_id=container.id)
    assert chart.content == png_bytes() and chart.content.startswith(b"\x89PNG")

    sources = {f.path: f.source async for f in oai.containers.files.list(container.id)}
    assert sources == {"/mnt/data/covid.csv": "user", "/mnt/data/weekly_cases.png": "assistant"}
    items = [item.type async for item in oai.conversations.items.list(conv.id, order="asc")]
    assert items == ["message", "reasoning", "code_interpreter_call", "message"]
    create_call = fake_openai.calls("POST /v1/responses$")[0]
    assert create_call.json["background"] is True and "idempotency-key" not in create_call.headers
    assert fake_openai.calls("GET /v1/responses/")[0].query_multi["include[]"] == INCLUDE
    assert fake_openai.responses[created.id].retrieves >= 2


async def test_second_run_on_busy_conversation_is_locked(fake_openai: FakeOpenAI, oai: AsyncOpenAI) -> None:
    conv = await oai.conversations.create()
    container_id = fake_openai.add_container()
    first = await _create_run(oai, conv.id, container_id, "first")

    with pytest.raises(openai.BadRequestError) as locked:
        await _create_run(oai, conv.id, container_id, "second")
    fake_openai.complete(first.id)
    second = await _create_run(oai, conv.id, container_id, "second, retried")

    assert locked.value.code == "conversation_locked"
    assert second.status == "queued"


async def test_expired_container_is_visible_and_rejected(fake_openai: FakeOpenAI, oai: AsyncOpenAI) -> None:
    conv = await oai.conversations.create()
    container = await oai.containers.create(name="old")
    fake_openai.expire_container(container.id)

    retrieved = await oai.containers.retrieve(container.id)
    with pytest.raises(openai.BadRequestError) as expired:
        await _create_run(oai, conv.id, container.id, "plot again")

    assert retrieved.status == "expired"
    # The SDK prefixes .message ("Error code: 400 - …"); the server's text is in .body.
    assert isinstance(expired.value.body, dict)
    assert expired.value.body["message"] == "Container is expired."
    assert fake_openai.responses == {}


async def test_injected_quota_error_reaches_the_client(fake_openai: FakeOpenAI, oai: AsyncOpenAI) -> None:
    conv = await oai.conversations.create()
    container_id = fake_openai.add_container()
    fake_openai.fail_next(
        "POST /v1/responses",
        status=429,
        body={
            "error": {
                "message": "You exceeded your current quota.",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
                "param": None,
            }
        },
    )

    with pytest.raises(openai.RateLimitError) as quota:
        await _create_run(oai, conv.id, container_id, "hi")
    after = await _create_run(oai, conv.id, container_id, "hi again")

    assert quota.value.code == "insufficient_quota" and quota.value.type == "insufficient_quota"
    assert after.status == "queued"


async def test_failed_turn_and_container_lifecycle(fake_openai: FakeOpenAI, oai: AsyncOpenAI) -> None:
    conv = await oai.conversations.create()
    container = await oai.containers.create(name="lifecycle")
    added = await oai.containers.files.create(container.id, file=("notes.txt", b"hello", "text/plain"))
    fake_openai.queue(Turn(status="failed", error={"code": "server_error", "message": "boom"}))

    failed = await _poll(oai, (await _create_run(oai, conv.id, container.id, "x")).id)
    listed = [c.id async for c in oai.containers.list(name="lifecycle")]
    await oai.containers.delete(container.id)

    assert added.path == "/mnt/data/notes.txt" and added.source == "user"
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "server_error" and failed.output == []
    assert listed == [container.id]
    assert container.id not in fake_openai.containers
    assert fake_openai.conversations[conv.id].items == []


async def test_wrong_api_key_is_rejected(fake_openai: FakeOpenAI) -> None:
    client = AsyncOpenAI(api_key="sk-wrong", base_url=fake_openai.base_url, max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError) as denied:
            await client.conversations.create()
    finally:
        await client.close()

    assert denied.value.code == "invalid_api_key"


async def test_slack_auth_and_threaded_metadata(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    fake_slack.add_message("C0MATH", "1754900000.000100", "<@U0TUTORBOT> help", "U0ALICE")
    auth = await slack.auth_test()
    posted = await slack.chat_postMessage(
        channel="C0MATH",
        thread_ts="1754900000.000100",
        text="x = 1",
        metadata={"event_type": "tutor_reply", "event_payload": {"run": "r1"}},
    )
    with_meta = await slack.conversations_replies(
        channel="C0MATH", ts="1754900000.000100", include_all_metadata=True
    )
    without_meta = await slack.conversations_replies(channel="C0MATH", ts="1754900000.000100")
    bad = AsyncWebClient(token="xoxb-wrong", base_url=fake_slack.api_url)
    with pytest.raises(SlackApiError) as denied:
        await bad.auth_test()

    assert (auth["user_id"], auth["bot_id"], auth["team_id"]) == ("U0TUTORBOT", "B0TUTOR", "T0001")
    assert [m["ts"] for m in with_meta["messages"]] == ["1754900000.000100", posted["ts"]]
    assert with_meta["messages"][1]["metadata"]["event_payload"] == {"run": "r1"}
    assert "metadata" not in without_meta["messages"][1]
    assert fake_slack.messages("C0MATH", "1754900000.000100")[0]["text"] == "x = 1"
    assert fake_slack.calls("chat.postMessage")[0].json["thread_ts"] == "1754900000.000100"
    assert denied.value.response["error"] == "invalid_auth"


async def test_slack_upload_v2_lands_in_thread(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    chart = png_bytes(4, 3)
    result = await slack.files_upload_v2(
        channel="C0MATH",
        thread_ts="1754900000.000100",
        filename="chart-1.png",
        content=chart,
        title="Cases per week",
        initial_comment="Here is your chart",
    )
    info = await slack.files_info(file=result["file"]["id"])

    upload = fake_slack.uploads[0]
    assert (upload.filename, upload.title, upload.content) == ("chart-1.png", "Cases per week", chart)
    assert (upload.channel_id, upload.thread_ts) == ("C0MATH", "1754900000.000100")
    assert upload.initial_comment == "Here is your chart"
    share = info["file"]["shares"]["public"]["C0MATH"][0]
    assert share["thread_ts"] == "1754900000.000100"
    assert "authorization" not in fake_slack.calls("/upload/v1/")[0].headers
    assert fake_slack.calls("files.getUploadURLExternal")[0].query["length"] == str(len(chart))
    complete = fake_slack.calls("files.completeUploadExternal")[0].args
    assert complete["files"][0]["title"] == "Cases per week"


async def test_slack_hosted_file_needs_the_bot_token(fake_slack: FakeSlack) -> None:
    content = b"week,cases\n" * 20_000
    file_obj = fake_slack.host_file("covid.csv", content, "text/csv")

    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {fake_slack.bot_token}"}
        async with session.get(file_obj["url_private_download"], headers=headers) as authed:
            body = await authed.read()
        async with session.get(file_obj["url_private_download"]) as anonymous:
            page_type = anonymous.content_type
            page = await anonymous.text()

    assert body == content and file_obj["size"] == len(content)
    assert anonymous.status == 200 and page_type == "text/html" and "Sign in" in page


async def test_slack_reactions_and_response_url(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    fake_slack.add_message("C0MATH", "1754900000.000100", "hi", "U0ALICE")
    await slack.reactions_add(channel="C0MATH", timestamp="1754900000.000100", name="eyes")
    with pytest.raises(SlackApiError) as again:
        await slack.reactions_add(channel="C0MATH", timestamp="1754900000.000100", name="eyes")
    async with (
        aiohttp.ClientSession() as session,
        session.post(fake_slack.response_url(), json={"text": "Reset done"}) as answer,
    ):
        answered = await answer.text()

    assert again.value.response["error"] == "already_reacted"
    assert fake_slack.reactions_on("C0MATH", "1754900000.000100") == ["eyes"]
    assert answered == "ok" and fake_slack.responded[0]["text"] == "Reset done"


async def test_ambiguous_create_and_timeouts_can_be_simulated(
    fake_openai: FakeOpenAI, oai: AsyncOpenAI
) -> None:
    conv = await oai.conversations.create()
    container_id = fake_openai.add_container()
    fake_openai.fail_next(
        "POST /v1/responses$",
        status=500,
        body={"error": {"message": "upstream", "type": "server_error", "code": None}},
        after_handling=True,
    )
    fake_openai.delay_next("GET /v1/conversations/", 0.3)

    with pytest.raises(openai.InternalServerError):
        await _create_run(oai, conv.id, container_id, "did it start?")
    with pytest.raises(openai.APITimeoutError):
        await oai.with_options(timeout=0.05).conversations.retrieve(conv.id)

    orphan = fake_openai.active_response(conv.id)
    assert orphan is not None and orphan.request["metadata"] == {"tutor_run": "run-1"}


async def test_wait_for_reports_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="the reply"):
        await wait_for(lambda: False, timeout=0.05, message="the reply")
