"""/tutor, Start over, and Slack's AI-app surfaces, end to end with signed requests."""

from __future__ import annotations

import json
import time

from tests.conftest import Bot, BotFactory
from tests.fakes import wait_for
from tests.slack_payloads import (
    ALICE,
    CHANNEL,
    DM,
    block_action,
    dm,
    envelope,
    file_share,
    mention,
    message,
    new_ts,
    slash_command,
)
from tests.test_files import _csv


async def _command(bot: Bot, text: str, channel: str = CHANNEL, user: str = ALICE) -> str:
    began = time.monotonic()
    status, body = await bot.send_form(
        slash_command(text, response_url=bot.slack.response_url(), channel=channel, user=user)
    )
    assert status == 200
    assert time.monotonic() - began < 3.0  # Slack's limit for the ack
    return str(json.loads(body)["text"]) if body.startswith("{") else body


async def _ask(bot: Bot, text: str, ts: str | None = None, thread_ts: str | None = None) -> str:
    ts = ts or new_ts()
    runs_before = len(await bot.runs())
    await bot.send(mention(text, ts=ts, thread_ts=thread_ts))
    await bot.wait_runs_finished(runs_before + 1)
    return ts


async def test_reset_in_channel_starts_every_thread_fresh_and_deletes_its_openai_objects(bot: Bot) -> None:
    first = await _ask(bot, "What is 1 + 1?")
    await bot.send(file_share("<@U0TUTORBOT> and plot this", [_csv(bot)], thread_ts=first))
    await bot.wait_runs_finished(2)
    second = await _ask(bot, "What is 2 + 2?")
    await _ask(bot, "Elsewhere", ts=new_ts())  # a third thread in the channel
    old = {c.json["conversation"] for c in bot.openai.calls("POST /v1/responses$")}
    containers = set(bot.openai.containers)
    file_id = next(iter(bot.openai.files))

    answer = await _command(bot, "reset")
    assert answer.startswith(f"Reset 3 tutor threads in <#{CHANNEL}>")

    # OpenAI clean-up happens after the ack, in the worker.
    deleted = await wait_for(
        lambda: (
            {c.path for c in bot.openai.calls("DELETE")}
            >= (
                {f"/v1/conversations/{c}" for c in old}
                | {f"/v1/containers/{c}" for c in containers}
                | {f"/v1/files/{file_id}"}
            )
        ),
        message="reset did not delete the conversations, containers and files",
    )
    assert deleted

    # The next message in an old thread starts a new conversation; the thread is still a tutor thread.
    await bot.send(message("and 3 + 3?", thread_ts=second))
    await bot.wait_runs_finished(5)
    latest = bot.openai.calls("POST /v1/responses$")[-1].json
    assert latest["conversation"] not in old
    assert latest["tools"][0]["container"] not in containers


async def test_reset_in_a_dm(bot: Bot) -> None:
    await bot.send(dm("what's a derivative?"))
    await bot.wait_runs_finished(1)
    answer = await _command(bot, "reset", channel=DM)
    assert answer.startswith("Reset 1 tutor thread in this DM")
    await bot.send(dm("and an integral?"))
    await bot.wait_runs_finished(2)
    creates = [c.json["conversation"] for c in bot.openai.calls("POST /v1/responses$")]
    assert creates[0] != creates[1]


async def test_at_tutor_reset_in_a_thread_resets_only_that_thread(bot: Bot) -> None:
    kept, reset = await _ask(bot, "Keep me"), await _ask(bot, "Forget me")
    await bot.send(mention("reset", thread_ts=reset))
    await bot.wait_runs_finished(3)
    posts = bot.slack.messages(CHANNEL, reset)
    assert posts[-1]["text"].startswith("Starting over")
    await bot.send(message("new question", thread_ts=reset))
    await bot.send(message("old thread question", thread_ts=kept))
    await bot.wait_runs_finished(5)
    by_text = {
        c.json["input"][0]["content"][0]["text"].split("] ", 1)[1]: c.json["conversation"]
        for c in bot.openai.calls("POST /v1/responses$")
    }
    assert by_text["new question"] != by_text["Forget me"]
    assert by_text["old thread question"] == by_text["Keep me"]
    assert bot.openai.calls("POST /v1/responses$")[-1].status == 200


async def test_every_answer_has_a_start_over_button_that_resets_its_thread(bot: Bot) -> None:
    ts = await _ask(bot, "What is 5 * 5?")
    (answer,) = bot.slack.messages(CHANNEL, ts)
    button = answer["blocks"][-1]["elements"][0]
    assert button["action_id"] == "tutor_start_over" and button["text"]["text"] == "Start over"
    press = block_action(
        "tutor_start_over",
        button["value"],
        message_ts=answer["ts"],
        thread_ts=ts,
        response_url=bot.slack.response_url("start-over"),
    )
    assert (await bot.send_form(press))[0] == 200
    assert (await bot.send_form(press))[0] == 200  # pressed twice: one reset
    await bot.wait_runs_finished(2)
    notices = [m["text"] for m in bot.slack.messages(CHANNEL, ts) if m["text"].startswith("Starting over")]
    assert len(notices) == 1
    conversation = bot.openai.calls("POST /v1/responses$")[0].json["conversation"]
    await wait_for(
        lambda: any(c.path == f"/v1/conversations/{conversation}" for c in bot.openai.calls("DELETE"))
    )


async def test_help_status_and_unknown(bot: Bot) -> None:
    help_text = await _command(bot, "help")
    for needle in ("@tutor", "/tutor reset", "/tutor profile", "CSV", "Start over"):
        assert needle in help_text
    assert await _command(bot, "") == help_text
    unknown = await _command(bot, "frobnicate now")
    assert unknown.startswith("unknown command: frobnicate") and "/tutor reset" in unknown

    await _ask(bot, "Status check")
    await bot.send(file_share("<@U0TUTORBOT> what's in here?", [_csv(bot)]))
    await bot.wait_runs_finished(2)
    status = await _command(bot, "status")
    assert "*Profile:* Math Tutor" in status
    assert "`gpt-6-luna`" in status
    assert "*Active tutor threads:* 2" in status
    assert "*Auto analysis of shared spreadsheets:* off" in status
    assert "*Files held:* 1" in status


async def test_profile_switch_changes_what_openai_receives(bot: Bot) -> None:
    listing = await _command(bot, "profile")
    assert "`math` — Math Tutor (in use here)" in listing and "`data` — Data Visualizer" in listing
    assert "no profile called `poetry`" in await _command(bot, "profile poetry")
    assert "Data Visualizer" in await _command(bot, "profile data")
    await _ask(bot, "Show me something")
    assert (
        bot.openai.calls("POST /v1/responses$")[-1]
        .json["instructions"]
        .startswith("You are great at creating beautiful data visualizations.")
    )
    assert "*Profile:* Data Visualizer" in await _command(bot, "status")
    await _command(bot, "profile Math Tutor")
    await _ask(bot, "Back to math")
    assert (
        bot.openai.calls("POST /v1/responses$")[-1].json["instructions"].startswith("You are a personal math")
    )


async def test_custom_instructions_are_sent_with_every_run_in_the_channel(bot: Bot) -> None:
    assert "limit is 3000" in await _command(bot, "instructions " + "x" * 3001)
    await _command(bot, "instructions Answer in French and keep it short.")
    assert "Answer in French" in await _command(bot, "status")
    await _ask(bot, "What is 2 + 2?")
    assert (
        "Answer in French and keep it short."
        in bot.openai.calls("POST /v1/responses$")[-1].json["instructions"]
    )
    await bot.send(dm("elsewhere"))
    await bot.wait_runs_finished(2)
    assert "Answer in French" not in bot.openai.calls("POST /v1/responses$")[-1].json["instructions"]
    await _command(bot, "instructions clear")
    await _ask(bot, "And now?")
    assert "Answer in French" not in bot.openai.calls("POST /v1/responses$")[-1].json["instructions"]


async def test_agent_view_dm_open_sets_suggested_prompts_without_thread(bot: Bot) -> None:
    event = {"type": "app_home_opened", "user": ALICE, "channel": DM, "tab": "messages", "event_ts": new_ts()}
    assert (await bot.send(envelope(event)))[0] == 200
    (call,) = await wait_for(lambda: bot.slack.calls("assistant.threads.setSuggestedPrompts"))
    assert call.args["channel_id"] == DM
    assert "thread_ts" not in call.args
    titles = [p["message"] for p in call.args["prompts"]]
    assert titles == [
        "Solve 3x + 11 = 14 step by step",
        "Explain derivatives with a plot",
        "Analyse a CSV I'll share",
    ]


async def test_assistant_thread_started_sets_prompts_in_that_thread(bot: Bot) -> None:
    thread_ts = new_ts()
    event = {
        "type": "assistant_thread_started",
        "assistant_thread": {
            "user_id": ALICE,
            "context": {"channel_id": CHANNEL, "team_id": "T0001"},
            "channel_id": DM,
            "thread_ts": thread_ts,
        },
        "event_ts": new_ts(),
    }
    assert (await bot.send(envelope(event)))[0] == 200
    (call,) = await wait_for(lambda: bot.slack.calls("assistant.threads.setSuggestedPrompts"))
    assert call.args["channel_id"] == DM and call.args["thread_ts"] == thread_ts
    # The first question in that thread titles it.
    await bot.send(dm("Integrate x squared please", thread_ts=thread_ts))
    await bot.wait_runs_finished(1)
    (title,) = bot.slack.calls("assistant.threads.setTitle")
    assert title.args["thread_ts"] == thread_ts and title.args["title"] == "Integrate x squared please"


async def test_status_is_refreshed_on_a_long_run(start_bot: BotFactory, monkeypatch: object) -> None:
    import bot.poller as poller

    # Slack clears a status after 2 minutes; the refresh interval is shortened for the test.
    monkeypatch.setattr(poller, "STATUS_REFRESH", poller.timedelta(seconds=0.3))  # type: ignore[attr-defined]
    bot = await start_bot()
    bot.openai.latency = 1.2
    bot.openai.stream_span = 0.1  # thinks for 1.1 s before the first words
    ts = await _ask(bot, "A long computation")
    statuses = [
        c.args["status"] for c in bot.slack.calls("assistant.threads.setStatus") if c.args["thread_ts"] == ts
    ]
    assert statuses[0] == "is thinking…"
    assert len(statuses) >= 3
    assert "is running code…" not in statuses[:1]


async def test_app_home_lists_the_users_recent_threads(bot: Bot) -> None:
    await _ask(bot, "First")
    await _ask(bot, "Second")
    event = {"type": "app_home_opened", "user": ALICE, "channel": DM, "tab": "home", "event_ts": new_ts()}
    await bot.send(envelope(event))
    (publish,) = await wait_for(lambda: bot.slack.calls("views.publish"))
    assert publish.args["user_id"] == ALICE
    view = publish.args["view"]
    assert view["type"] == "home"
    texts = json.dumps(view["blocks"])
    assert "Your recent tutor threads" in texts
    assert texts.count(f"Thread in <#{CHANNEL}>") == 2


async def test_reset_ack_is_fast_even_when_openai_deletes_hang(bot: Bot) -> None:
    await _ask(bot, "Something to reset")
    bot.openai.delay_next("DELETE", 10.0, times=5)
    began = time.monotonic()
    answer = await _command(bot, "reset")
    assert time.monotonic() - began < 2.5  # the deletes hang for 10 s
    assert answer.startswith("Reset 1 tutor thread")
    # Hanging deletes don't hold up answers either.
    await wait_for(lambda: bot.openai.calls("DELETE"), message="no delete attempted")
    began = time.monotonic()
    await _ask(bot, "Still there?")
    assert time.monotonic() - began < 5.0


async def test_deletes_that_fail_are_retried_later(bot: Bot) -> None:
    from sqlalchemy import select, update

    from db.models import Cleanup, utcnow

    await _ask(bot, "Something to forget")
    conversation = bot.openai.calls("POST /v1/responses$")[0].json["conversation"]
    down = {"error": {"message": "down", "type": "server_error", "code": None}}
    # One delete call: the first try and the SDK's one retry (of the conversation, after its items).
    bot.openai.fail_next(f"DELETE /v1/conversations/{conversation}$", status=503, body=down, times=2)
    await _command(bot, "reset")

    async def failed_once() -> list[Cleanup]:
        async with bot.components.sessions() as session:
            rows = (await session.scalars(select(Cleanup).where(Cleanup.kind == "conversation"))).all()
        return [r for r in rows if r.last_error == "open_ai_unavailable" and r.done_at is None]

    (row,) = await wait_for(failed_once, message="the failed delete was not recorded for a retry")
    assert row.next_attempt_at > utcnow()  # backed off, not dropped
    async with bot.components.sessions.begin() as session:  # fast-forward the backoff
        await session.execute(update(Cleanup).where(Cleanup.id == row.id).values(next_attempt_at=utcnow()))
    bot.components.poller.wake()

    async def done() -> bool:
        async with bot.components.sessions() as session:
            return (await session.get(Cleanup, row.id)).done_at is not None  # type: ignore[union-attr]

    await wait_for(done, message="the delete was never retried")
    assert bot.openai.calls(f"DELETE /v1/conversations/{conversation}$")[-1].status == 200


async def test_reset_deletes_the_conversations_items_before_the_conversation(bot: Bot) -> None:
    # OpenAI keeps a deleted conversation's items (openai.md §4.8): they are deleted one by one first.
    ts = await _ask(bot, "What is 1 + 1?")
    await bot.send(message("and 2 + 2?", thread_ts=ts))
    await bot.wait_runs_finished(2)
    conversation = bot.openai.calls("POST /v1/responses$")[0].json["conversation"]
    items = [i["id"] for i in bot.openai.conversations[conversation].items]
    assert len(items) >= 4  # two questions and their answers

    await _command(bot, "reset")
    await wait_for(lambda: bot.openai.conversations[conversation].deleted, message="not deleted")
    assert bot.openai.conversations[conversation].items == []
    paths = [c.path for c in bot.openai.calls("DELETE")]
    item_paths = [f"/v1/conversations/{conversation}/items/{i}" for i in items]
    assert set(item_paths) <= set(paths)
    assert paths.index(f"/v1/conversations/{conversation}") > max(paths.index(p) for p in item_paths)
