"""A mention gets a threaded answer; the thread keeps its conversation; duplicates answer once."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Bot
from tests.fakes import Chart, Turn, wait_for
from tests.slack_payloads import ALICE, BOT_USER, CHANNEL, DM, dm, mention, message, new_ts


async def test_mention_gets_answer_in_its_thread(bot: Bot) -> None:
    ts = new_ts()
    status, _ = await bot.send(mention("I need to solve the equation 3x + 11 = 14. Can you help me?", ts=ts))
    assert status == 200

    posts = await wait_for(lambda: bot.slack.messages(CHANNEL, ts), message="no reply in the thread")
    assert len(posts) == 1
    assert posts[0]["thread_ts"] == ts
    assert "*3x = 3*" in posts[0]["text"]  # Markdown bold became Slack bold
    assert "**" not in posts[0]["text"]

    # A visible sign of work was shown in that thread before the answer.
    statuses = bot.slack.calls("assistant.threads.setStatus")
    assert statuses and statuses[0].args["thread_ts"] == ts
    assert statuses[0].args["status"] == "is thinking…"

    create = bot.openai.calls("POST /v1/responses$")
    assert len(create) == 1
    body = create[0].json
    assert body["background"] is True and body["store"] is True
    assert body["model"] == "gpt-6-luna"
    assert body["conversation"].startswith("conv_")
    assert body["tools"][0]["type"] == "code_interpreter"
    assert body["tools"][0]["container"].startswith("cntr_")
    assert "3x + 11 = 14" in body["input"][0]["content"][0]["text"]
    assert "<@" not in body["input"][0]["content"][0]["text"]
    # Per-run instructions: the profile's plus the user's display name and Slack formatting.
    assert body["instructions"].startswith("You are a personal math tutor.")
    assert "Alice" in body["instructions"]
    assert "Slack" in body["instructions"]
    assert body["metadata"]["slack_thread"] == f"T0001:{CHANNEL}:{ts}"
    assert len(bot.slack.calls("users.info")) == 1


async def test_slack_and_openai_calls_reuse_their_connections(bot: Bot) -> None:
    """slack_sdk opens a new connection (with a TLS handshake, at Slack) for each call of a client
    made without a session: the worker's calls go over connections it keeps open instead."""
    for n in range(3):
        ts = new_ts()
        await bot.send(mention(f"What is {n} + {n}?", ts=ts))
        await wait_for(lambda ts=ts: bot.slack.messages(CHANNEL, ts), message="no reply in the thread")
    worker = [r for r in bot.slack.requests if r.name not in ("auth.test",)]
    assert len(worker) >= 6, [r.name for r in worker]  # a status and the answer, for each question
    slack_connections = {r.peer for r in worker}
    assert len(slack_connections) <= 3, f"{len(worker)} Slack calls over {len(slack_connections)} connections"
    openai_connections = {r.peer for r in bot.openai.requests}
    assert len(openai_connections) <= 3, (
        f"{len(bot.openai.requests)} OpenAI calls, {len(openai_connections)} connections"
    )


async def test_follow_up_in_thread_keeps_the_conversation(bot: Bot) -> None:
    root = new_ts()
    await bot.send(mention("What is 2 + 2?", ts=root))
    await wait_for(lambda: bot.slack.messages(CHANNEL, root))
    # A follow-up without a mention, in the same thread.
    await bot.send(message("and times 3?", thread_ts=root))
    await wait_for(lambda: len(bot.slack.messages(CHANNEL, root)) == 2, message="follow-up not answered")

    creates = [c.json for c in bot.openai.calls("POST /v1/responses$")]
    assert len(creates) == 2
    assert creates[0]["conversation"] == creates[1]["conversation"]
    assert creates[0]["tools"][0]["container"] == creates[1]["tools"][0]["container"]
    assert len(bot.openai.calls("POST /v1/conversations$")) == 1
    # users.info is cached per user.
    assert len(bot.slack.calls("users.info")) == 1


async def test_another_thread_gets_its_own_conversation(bot: Bot) -> None:
    first, second = new_ts(), new_ts()
    await bot.send(mention("Question one", ts=first))
    await bot.send(mention("Question two", ts=second))
    await wait_for(lambda: bot.slack.messages(CHANNEL, first) and bot.slack.messages(CHANNEL, second))
    conversations = {c.json["conversation"] for c in bot.openai.calls("POST /v1/responses$")}
    containers = {c.json["tools"][0]["container"] for c in bot.openai.calls("POST /v1/responses$")}
    assert len(conversations) == 2
    assert len(containers) == 2


async def test_message_in_channel_without_mention_is_not_answered(bot: Bot) -> None:
    status, _ = await bot.send(message("just chatting"))
    assert status == 200
    unrelated_thread = new_ts()
    await bot.send(message("a reply in someone else's thread", thread_ts=unrelated_thread))
    assert await bot.runs() == []
    assert bot.openai.calls("POST /v1/responses") == []


@pytest.mark.parametrize(
    "event",
    [
        {"bot_id": "B0OTHER"},
        {"subtype": "bot_message", "bot_id": "B0OTHER"},
        {"user": BOT_USER, "bot_id": "B0TUTOR"},
        {"subtype": "message_changed", "hidden": True},
        {"subtype": "message_deleted", "hidden": True},
        {"subtype": "channel_join"},
        {"edited": {"user": ALICE, "ts": "1754900999.000000"}},
    ],
)
async def test_bots_edits_and_deletions_are_ignored(bot: Bot, event: dict[str, object]) -> None:
    root = new_ts()
    await bot.send(mention("Start", ts=root))
    await wait_for(lambda: bot.slack.messages(CHANNEL, root))
    payload = message("noise in the tutor thread", thread_ts=root, **event)
    if event.get("user") == BOT_USER:
        payload["event"]["user"] = BOT_USER
    status, _ = await bot.send(payload)
    assert status == 200
    edited_mention = mention("edited question", thread_ts=root)
    if "edited" in event:
        edited_mention["event"]["edited"] = event["edited"]
        status, _ = await bot.send(edited_mention)
        assert status == 200
    runs = await bot.runs()
    assert len(runs) == 1


async def test_duplicate_deliveries_answer_once(bot: Bot) -> None:
    ts = new_ts()
    first = mention("What is 7 * 6?", ts=ts)
    # The message.channels twin of the mention: same (channel, ts), other event_id.
    twin = message(f"<@{BOT_USER}> What is 7 * 6?", ts=ts)
    # Slack's retries (same event_id), sent while the first may still be in flight.
    results = await asyncio.gather(
        bot.send(first),
        bot.send(first, retry_num=1),
        bot.send(twin),
        bot.send(twin, retry_num=2),
    )
    assert [status for status, _ in results] == [200, 200, 200, 200]
    await bot.wait_runs_finished(1)
    # An edit of the message re-fires app_mention with `edited`.
    edited = mention("What is 7 * 6? (edited)", ts=ts)
    edited["event"]["edited"] = {"user": ALICE, "ts": new_ts()}
    assert (await bot.send(edited))[0] == 200

    assert len(await bot.runs()) == 1
    assert len(bot.slack.messages(CHANNEL, ts)) == 1
    assert len(bot.openai.calls("POST /v1/responses$")) == 1


async def test_dm_is_one_conversation_until_threads(bot: Bot) -> None:
    await bot.send(dm("what's a derivative?"))
    await wait_for(lambda: len(bot.slack.messages(DM)) == 1)
    await bot.send(dm("and an integral?"))
    await wait_for(lambda: len(bot.slack.messages(DM)) == 2)
    top = [c.json["conversation"] for c in bot.openai.calls("POST /v1/responses$")]
    assert top[0] == top[1]
    # DM answers at the top level go to the top level; a reaction shows work instead of a thread status.
    assert all(m.get("thread_ts") is None for m in bot.slack.messages(DM))
    assert bot.slack.calls("reactions.add")

    root = new_ts()
    await bot.send(dm("a threaded question", thread_ts=root))
    await wait_for(lambda: bot.slack.messages(DM, root))
    creates = [c.json["conversation"] for c in bot.openai.calls("POST /v1/responses$")]
    assert creates[2] != creates[0]


async def test_chart_is_uploaded_into_the_thread(bot: Bot) -> None:
    bot.openai.queue(Turn(text="Here is the plot of y = x².", charts=[Chart("parabola.png")]))
    ts = new_ts()
    await bot.send(mention("Plot y = x^2", ts=ts))
    uploads = await wait_for(lambda: bot.slack.uploads, message="chart not uploaded")
    assert len(uploads) == 1
    assert uploads[0].thread_ts == ts
    assert uploads[0].channel_id == CHANNEL
    assert uploads[0].filename == "parabola.png"
    assert uploads[0].title == "Parabola"
    assert uploads[0].content.startswith(b"\x89PNG")
    text = bot.slack.messages(CHANNEL, ts)[0]["text"]
    assert "sandbox:" not in text
    await bot.wait_runs_finished(1)
    assert len(bot.slack.uploads) == 1


async def test_questions_in_one_thread_are_answered_in_order_one_at_a_time(bot: Bot) -> None:
    bot.openai.latency = 0.3
    root = new_ts()
    await bot.send(mention("First question", ts=root))
    second, third = new_ts(), new_ts()
    await bot.send(message("Second question", ts=second, thread_ts=root))
    await bot.send(message("Third question", ts=third, thread_ts=root))
    await bot.wait_runs_finished(3)

    creates = bot.openai.calls("POST /v1/responses$")
    assert [c.status for c in creates] == [200, 200, 200]  # never conversation_locked
    texts = [c.json["input"][0]["content"][0]["text"] for c in creates]
    assert [t.split("] ", 1)[1] for t in texts] == ["First question", "Second question", "Third question"]
    # The fake answers a create on a busy conversation with 400 conversation_locked: all 200s above
    # mean each create waited for the previous response to finish.
    assert len({c.json["conversation"] for c in creates}) == 1
    assert len(bot.slack.messages(CHANNEL, root)) == 3


async def test_every_chart_once_in_citation_order_including_uncited_and_generic_names(bot: Bot) -> None:
    bot.openai.queue(
        Turn(
            text="Three views of the data.",
            charts=[
                Chart("weekly_cases.png"),
                Chart("deaths.png", cite_name="cfile_0123abcd.png"),
                Chart("weekly_cases_again.png", cite=False),  # saved but never cited
            ],
        )
    )
    ts = new_ts()
    await bot.send(mention("Plot it", ts=ts))
    await bot.wait_runs_finished(1)
    uploads = bot.slack.uploads
    assert [u.filename for u in uploads] == ["weekly_cases.png", "chart-2.png", "weekly_cases_again.png"]
    assert [u.title for u in uploads] == ["Weekly cases", "Chart 2", "Weekly cases again"]
    assert all(u.thread_ts == ts for u in uploads)
    assert len({u.file_id for u in uploads}) == 3
