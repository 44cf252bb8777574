"""Answers grow in the thread as the model writes them, with the code it runs shown as tasks and a
*Show work* button; one message per answer through refusals, expiry, 429s and a kill -9."""

from __future__ import annotations

import gc
import signal
import sys
import time
from typing import Any

from bot.live import APPEND_EVERY
from bot.slack_api import STREAM_CALL_TIMEOUT
from tests.conftest import Bot, BotFactory
from tests.fakes import Chart, Turn, wait_for
from tests.slack_payloads import ALICE, CHANNEL, DM, TEAM, block_action, dm, mention, new_ts
from tests.test_exactly_once import spawn_worker  # noqa: F401  (fixture)

LONG_TEXT = " ".join(f"Step {n}: subtract 11 from both sides, so **3x = 3** and x = 1." for n in range(12))
SHOW_WORK = "tutor_show_work"


def _live(bot: Bot, ts: str, channel: str = CHANNEL) -> list[dict[str, Any]]:
    return bot.slack.messages(channel, ts, live=True)


def _thinking(bot: Bot, latency: float, span: float) -> None:
    bot.openai.latency = latency
    bot.openai.stream_span = span


async def _ask(bot: Bot, text: str = "Solve 3x + 11 = 14", *, channel: str = CHANNEL) -> str:
    ts = new_ts()
    await bot.send(mention(text, ts=ts, channel=channel))
    return ts


def _controls(message: dict[str, Any]) -> list[str]:
    actions = [b for b in message.get("blocks") or [] if b["type"] == "actions"]
    return [element["action_id"] for element in actions[-1]["elements"]] if actions else []


async def test_the_first_words_show_before_the_model_is_done(bot: Bot) -> None:
    _thinking(bot, latency=2.5, span=2.0)
    bot.openai.queue(Turn(text=LONG_TEXT, code=None))
    ts = await _ask(bot)

    def first_words() -> bool:
        return any(m.get("text") for m in _live(bot, ts))

    await wait_for(first_words, timeout=10, message="no words streamed")
    (response,) = bot.openai.responses.values()
    assert not response.terminal, "the first words came only once the model was done"
    (start,) = bot.slack.calls("chat.startStream")
    assert start.args["thread_ts"] == ts
    assert start.args["recipient_user_id"] == ALICE and start.args["recipient_team_id"] == TEAM
    assert start.args["chunks"][0]["type"] == "markdown_text"

    await bot.wait_runs_finished(1)
    (answer,) = _live(bot, ts)  # one message: the stream, rewritten with the final answer
    assert "*3x = 3*" in answer["text"] and "**" not in answer["text"]
    assert _controls(answer) == ["tutor_start_over", SHOW_WORK]
    assert bot.slack.messages(CHANNEL, ts) == [answer], "the answer was left half-written"
    # About one append a second, however many words the model wrote.
    appends = bot.slack.calls("chat.appendStream")
    assert len(LONG_TEXT.split()) > 100 and 1 <= len(appends) <= 4
    assert bot.openai.polls() == []


async def test_the_thread_status_shows_while_the_model_thinks_and_clears_with_the_first_words(
    bot: Bot,
) -> None:
    _thinking(bot, latency=2.0, span=1.0)
    ts = await _ask(bot)
    await bot.wait_runs_finished(1)
    statuses = [c for c in bot.slack.calls("assistant.threads.setStatus") if c.args["thread_ts"] == ts]
    assert statuses[0].args["status"] == "is thinking…" and statuses[0].args["loading_messages"]
    assert statuses[-1].args["status"] == ""
    (start,) = bot.slack.calls("chat.startStream")
    assert statuses[-1].received_at >= start.received_at  # cleared once the words showed
    # The first words go at once, not after an append interval (1 s): the model's first delta
    # comes 1 s after the create here (about 0.1 s later on a quiet machine).
    (create,) = bot.openai.creates()
    assert start.received_at - (create.received_at + 1.0) < 0.8 * APPEND_EVERY


async def test_each_answer_is_one_message(bot: Bot) -> None:
    _thinking(bot, latency=1.5, span=1.0)
    roots = [await _ask(bot, f"Question {n}") for n in range(3)]
    await bot.wait_runs_finished(3, within=15)
    for ts in roots:
        (answer,) = _live(bot, ts)
        assert "3x = 3" in answer["text"]
    assert len(bot.openai.creates()) == 3


async def test_the_code_the_model_runs_is_a_task_with_its_code_and_output(bot: Bot) -> None:
    _thinking(bot, latency=1.5, span=1.0)
    bot.openai.queue(Turn(text="The product is 42.", code="print(6 * 7)", logs="42\n"))
    ts = await _ask(bot, "What is 6 times 7? Check it in Python.")
    await bot.wait_runs_finished(1)
    (answer,) = _live(bot, ts)
    updates = [
        u
        for c in bot.slack.calls("chat.startStream") + bot.slack.calls("chat.appendStream")
        for u in c.args.get("chunks") or []
        if u["type"] == "task_update"
    ]
    assert [u["status"] for u in updates] == ["in_progress", "complete"]
    assert updates[0]["title"] == "Running Python…"
    assert "print(6 * 7)" in updates[1]["details"] and updates[1]["output"] == "42\n"
    assert "42" in answer["text"]


async def test_show_work_shows_the_code_and_output_after_a_restart(start_bot: BotFactory) -> None:
    first = await start_bot()
    first.openai.queue(Turn(text="The product is 42.", code="print(6 * 7)", logs="42\n"))
    ts = await _ask(first, "What is 6 times 7?")
    await first.wait_runs_finished(1)
    (answer,) = first.slack.messages(CHANNEL, ts)
    value = answer["blocks"][-1]["elements"][1]["value"]
    await first.stop()

    again = await start_bot()  # a new process: nothing in memory
    press = block_action(
        SHOW_WORK, value, message_ts=answer["ts"], thread_ts=ts, response_url=again.slack.response_url()
    )
    assert (await again.send_form(press))[0] == 200
    (shown,) = await wait_for(lambda: again.slack.ephemeral_messages, message="no work shown")
    assert shown["ephemeral_user"] == ALICE and shown["thread_ts"] == ts
    text = "\n".join(b["text"]["text"] for b in shown["blocks"])
    assert "print(6 * 7)" in text and "42" in text
    assert len(again.openai.creates()) == 1, "Show work asked the model again"


async def test_show_work_on_an_answer_without_code_says_so(bot: Bot) -> None:
    bot.openai.queue(Turn(text="x = 1", code=None))
    ts = await _ask(bot)
    await bot.wait_runs_finished(1)
    (answer,) = bot.slack.messages(CHANNEL, ts)
    value = answer["blocks"][-1]["elements"][1]["value"]
    press = block_action(
        SHOW_WORK, value, message_ts=answer["ts"], thread_ts=ts, response_url=bot.slack.response_url()
    )
    await bot.send_form(press)
    (shown,) = await wait_for(lambda: bot.slack.ephemeral_messages, message="no reply to Show work")
    assert shown["text"] == "I didn't run any code for this answer."


async def test_a_refused_stream_still_gives_one_answer(bot: Bot) -> None:
    bot.slack.refuse_streams = "channel_type_not_supported"
    _thinking(bot, latency=2.5, span=2.0)
    bot.openai.queue(Turn(text=LONG_TEXT, code=None))
    ts = await _ask(bot)
    preview = await wait_for(lambda: _live(bot, ts), timeout=10, message="no preview posted")
    assert not any(r.terminal for r in bot.openai.responses.values()), "nothing was shown while writing"
    await bot.wait_runs_finished(1)
    (answer,) = _live(bot, ts)
    assert answer["ts"] == preview[0]["ts"]  # the preview became the answer
    assert "*3x = 3*" in answer["text"] and bot.slack.messages(CHANNEL, ts) == [answer]
    assert len(bot.slack.calls("chat.postMessage")) == 1
    assert all(c.args["ts"] == answer["ts"] for c in bot.slack.calls("chat.update"))


async def test_a_stream_start_that_timed_out_but_landed_is_not_opened_twice(bot: Bot) -> None:
    """chat.startStream times out on our side while Slack made the message: it carries no tag, so
    before opening again the relay looks for the app's untagged message after the question, and
    the final answer goes into it (before, the retry opened a second message)."""
    _thinking(bot, latency=4.0, span=3.5)
    bot.openai.queue(Turn(text=LONG_TEXT, code=None))
    bot.slack.delay_next("chat.startStream", STREAM_CALL_TIMEOUT + 2, after_handling=True)
    ts = await _ask(bot)
    await bot.wait_runs_finished(1, within=20)
    answers = _live(bot, ts)
    assert len(answers) == 1, f"{len(answers)} messages: {[a.get('text') for a in answers]}"
    assert "Step 11" in answers[0]["text"] and not answers[0].get("live")
    assert len(bot.slack.calls("chat.startStream")) == 1


async def test_a_dm_answer_at_the_top_level_is_posted_and_grows(bot: Bot) -> None:
    _thinking(bot, latency=2.5, span=2.0)
    bot.openai.queue(Turn(text=LONG_TEXT, code=None))
    ts = new_ts()
    await bot.send(dm("Solve 3x + 11 = 14", ts=ts))
    await bot.wait_runs_finished(1)
    answers = [m for m in bot.slack.messages(DM, live=True) if m["ts"] > ts]
    assert len(answers) == 1 and "*3x = 3*" in answers[0]["text"]
    assert bot.slack.calls("chat.startStream") == []  # Slack streams only into threads


async def test_a_stream_slack_closed_is_finished_with_chat_update(bot: Bot) -> None:
    bot.slack.stream_expiry = 0.6
    _thinking(bot, latency=3.0, span=2.5)
    bot.openai.queue(Turn(text=LONG_TEXT, code=None))
    ts = await _ask(bot)
    await bot.wait_runs_finished(1, within=15)
    (answer,) = _live(bot, ts)
    assert "Step 11" in answer["text"] and bot.slack.messages(CHANNEL, ts) == [answer]
    updates = bot.slack.calls("chat.update")
    assert all(u.args["ts"] == answer["ts"] for u in updates)
    # After Slack closed the stream the answer kept growing as edits, then the final rewrite.
    assert [u for u in updates if "markdown_text" in u.args], "no edit after the stream closed"
    assert "markdown_text" not in updates[-1].args


async def test_slack_429_on_append_is_honoured(bot: Bot) -> None:
    _thinking(bot, latency=5.0, span=4.5)
    bot.openai.queue(Turn(text=LONG_TEXT, code=None))
    bot.slack.fail_next(
        "chat.appendStream",
        status=429,
        body={"ok": False, "error": "ratelimited"},
        headers={"Retry-After": "2"},
    )
    ts = await _ask(bot)
    await bot.wait_runs_finished(1, within=15)
    appends = bot.slack.calls("chat.appendStream")
    limited = [n for n, call in enumerate(appends) if call.status == 429]
    assert limited, "the 429 never happened"
    after = appends[limited[0] + 1 :]
    assert after, "nothing was appended after the 429"
    assert after[0].received_at - appends[limited[0]].received_at >= 1.9
    (answer,) = _live(bot, ts)
    assert "Step 11" in answer["text"]


async def test_a_long_answer_goes_on_in_a_follow_up_message(bot: Bot) -> None:
    # The relay appends about once a second, and what it hasn't streamed when the model is done
    # goes into the final answer instead: the first message must fill up well before the end
    # (here about half-way through the text, a few appends ahead of it, on a loaded machine too).
    _thinking(bot, latency=5.5, span=5.0)
    text = "\n\n".join(
        f"Paragraph {n}. " + "The sum of the series converges quickly. " * 12 for n in range(40)
    )
    assert len(text) > 20_000
    bot.openai.queue(Turn(text=text, code=None))
    ts = await _ask(bot)
    await bot.wait_runs_finished(1, within=20)
    streams = bot.slack.calls("chat.startStream")
    # How the text splits depends on how much each append carries: two messages or more.
    assert len(streams) >= 2, "the stream was not continued in a second message"
    assert all(c.args.get("error") != "msg_too_long" for c in bot.slack.calls("chat.appendStream"))
    answers = _live(bot, ts)
    assert bot.slack.messages(CHANNEL, ts) == answers
    shown = "\n".join(m["text"] for m in answers)
    assert "Paragraph 0." in shown and "Paragraph 39." in shown


WorkerSpawner = Any


async def test_kill_9_mid_stream_then_restart_completes_the_same_message(
    start_bot: BotFactory,
    spawn_worker: WorkerSpawner,  # noqa: F811
) -> None:
    web = await start_bot(with_worker=False)
    _thinking(web, latency=8.0, span=7.5)  # long enough to kill it mid-answer on a busy machine
    web.openai.queue(Turn(text=LONG_TEXT, code=None))
    worker = await spawn_worker()
    ts = await _ask(web)

    async def half_written() -> bool:
        (run,) = await web.runs() or [None]
        shown = _live(web, ts)
        return bool(run and run.stream_seq and shown and shown[0]["text"])

    await wait_for(half_written, timeout=20, message="the answer never started to stream")
    worker.send_signal(signal.SIGKILL)
    await worker.wait()
    (streamed,) = _live(web, ts)
    assert not any(r.terminal for r in web.openai.responses.values()), "killed too late: the model was done"

    restarted = time.monotonic()
    await start_bot(with_worker=True)
    await web.wait_runs_finished(1, within=20)
    (answer,) = _live(web, ts)
    assert answer["ts"] == streamed["ts"], "the answer went into a new message"
    assert web.slack.messages(CHANNEL, ts) == [answer], "the message was left half-written"
    assert "Step 0" in answer["text"] and "Step 11" in answer["text"]
    assert len(web.openai.creates()) == 1, "a second response was created"
    (resume, *_) = web.openai.resumes()
    assert int(resume.query["starting_after"]) > 0
    assert time.monotonic() - restarted < 15  # the model finishes 8 s after its create


async def test_a_dropped_stream_is_picked_up_after_its_last_relayed_event(bot: Bot) -> None:
    _thinking(bot, latency=2.5, span=2.0)
    bot.openai.queue(Turn(text=LONG_TEXT, code=None))
    bot.openai.cut_streams(after=30)  # the create's stream drops mid-answer
    ts = await _ask(bot)
    await bot.wait_runs_finished(1, within=15)
    (answer,) = _live(bot, ts)
    assert "Step 0" in answer["text"] and "Step 11" in answer["text"]
    assert len(bot.slack.calls("chat.startStream")) == 1, "the answer went into a second message"
    assert len(bot.openai.creates()) == 1
    (resume,) = bot.openai.resumes()
    assert 0 < int(resume.query["starting_after"]) < 30


async def test_a_stream_that_keeps_breaking_is_polled_instead(bot: Bot) -> None:
    _thinking(bot, latency=2.0, span=1.0)
    bot.openai.cut_streams(after=2, times=10)
    ts = await _ask(bot)
    await bot.wait_runs_finished(1, within=20)
    (answer,) = _live(bot, ts)
    assert "3x = 3" in answer["text"]
    assert len(bot.openai.creates()) == 1
    assert len(bot.openai.resumes()) == 2  # then polling, as before streaming
    assert bot.openai.polls()


async def test_show_work_pressed_in_another_channel_shows_nothing_of_the_answer(bot: Bot) -> None:
    bot.openai.queue(Turn(text="x = 1", code="secret = 42\nprint(secret)", logs="42\n"))
    ts = await _ask(bot)
    await _ask(bot, "Another question", channel="C0OTHER")
    await bot.wait_runs_finished(2)
    (answer,) = bot.slack.messages(CHANNEL, ts)
    value = answer["blocks"][-1]["elements"][1]["value"]
    (other,) = [m for m in bot.slack.messages("C0OTHER") if m.get("thread_ts")]
    press = block_action(
        SHOW_WORK,
        value,  # names the first channel's answer
        message_ts=other["ts"],
        thread_ts=other["thread_ts"],
        response_url=bot.slack.response_url(),
        channel="C0OTHER",
    )
    await bot.send_form(press)
    (shown,) = await wait_for(lambda: bot.slack.ephemeral_messages, message="no reply to Show work")
    assert shown["channel"] == "C0OTHER" and "secret" not in str(shown)
    assert shown["text"] == "I can't show the work for this answer anymore."


async def test_a_chart_is_uploaded_as_soon_as_the_answer_cites_it(bot: Bot) -> None:
    _thinking(bot, latency=3.0, span=2.5)
    bot.openai.queue(
        Turn(
            text="Here is the trend:",
            charts=[Chart("trend.png")],
            text_after_charts=" " + LONG_TEXT,
            code="plot()",
        )
    )
    ts = await _ask(bot, "Plot the trend")
    await bot.wait_runs_finished(1, within=15)
    (upload,) = bot.slack.uploads
    assert upload.thread_ts == ts and upload.filename == "trend.png"
    (shared,) = bot.slack.calls("files.completeUploadExternal")
    (response,) = bot.openai.responses.values()
    assert response.completed_at is not None and shared.received_at < response.completed_at - 1.0
    (answer,) = _live(bot, ts)
    assert "Step 11" in answer["text"]


async def test_a_finished_answer_leaves_no_half_read_event_stream_for_the_garbage_collector(bot: Bot) -> None:
    """The SDK's event stream is a chain of async generators (down to httpx's `aiter_raw`). Left
    suspended after the last event, they were closed by the garbage collector whenever it ran,
    each on its own: once that happened during another test, whose run failed on "async generator
    already executing" (CI, stop 18). Read to its end, the chain finishes by itself."""
    hooks = sys.get_asyncgen_hooks()
    left: list[str] = []

    def finalizer(agen: Any) -> None:  # called for a generator collected before it finished
        left.append(agen.__qualname__)
        if hooks.finalizer is not None:
            hooks.finalizer(agen)

    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=finalizer)
    try:
        _thinking(bot, latency=1.0, span=0.5)
        await _ask(bot)
        await bot.wait_runs_finished(1)
        gc.collect()
    finally:
        sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=hooks.finalizer)
    assert not [name for name in left if "aiter" in name or "stream" in name.lower()], left
