"""Feedback: every answer carries Slack's thumbs up / down; a click is recorded per answer and
person (the latest wins), a thumbs-down asks what was wrong, and the App Home shows the share."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select

from db import repo
from db.models import Feedback, utcnow
from tests.conftest import Bot
from tests.fakes import FakeSlack, Turn, wait_for
from tests.slack_payloads import (
    ALICE,
    CHANNEL,
    DM,
    TEAM,
    block_action,
    envelope,
    mention,
    new_ts,
    view_submission,
)
from tests.test_commands import _command

BOB = "U0BOB"
OTHER = "C0OTHER"


async def _ask(
    bot: Bot, text: str = "Solve 3x + 11 = 14", *, channel: str = CHANNEL, user: str = ALICE
) -> tuple[str, dict[str, Any]]:
    """A question answered in its thread: (thread root ts, the answer message)."""
    ts = new_ts()
    runs = len(await bot.runs())
    await bot.send(mention(text, ts=ts, channel=channel, user=user))
    await bot.wait_runs_finished(runs + 1)
    (answer,) = bot.slack.messages(channel, ts)
    return ts, answer


def _feedback(message: dict[str, Any]) -> dict[str, Any]:
    """The message's feedback_buttons element (exactly one context_actions block holding it)."""
    (block,) = [b for b in message.get("blocks") or [] if b["type"] == "context_actions"]
    (element,) = block["elements"]
    assert element["type"] == "feedback_buttons"
    return element


def _has_feedback(message: dict[str, Any]) -> bool:
    return any(b["type"] == "context_actions" for b in message.get("blocks") or [])


async def _click(
    bot: Bot,
    answer: dict[str, Any],
    thread_ts: str,
    button: str,
    *,
    user: str = ALICE,
    channel: str = CHANNEL,
    trigger_id: str = "123.456.abc",
    value: str | None = None,
) -> None:
    element = _feedback(answer)
    body = block_action(
        element["action_id"],
        value if value is not None else element[button]["value"],
        message_ts=answer["ts"],
        thread_ts=thread_ts,
        response_url=bot.slack.response_url("feedback"),
        channel=channel,
        user=user,
        trigger_id=trigger_id,
        element="feedback_buttons",
    )
    assert (await bot.send_form(body))[0] == 200


async def _ratings(bot: Bot) -> list[tuple[str, str, str, str | None]]:
    async with bot.components.sessions() as session:
        rows = await session.scalars(select(Feedback).order_by(Feedback.run_uuid, Feedback.user_id))
        return [(f.run_uuid, f.user_id, f.rating, f.comment) for f in rows]


async def _answer_uuid(bot: Bot, thread_ts: str) -> str:
    (run,) = [r for r in await bot.runs() if r.message_ts == thread_ts]
    return run.run_uuid


# -- The buttons on every answer, and the fake's checks of them ----------------------------------


async def test_a_streamed_answer_ends_with_valid_feedback_buttons(bot: Bot) -> None:
    bot.openai.latency, bot.openai.stream_span = 2.5, 2.0  # streamed even on a loaded machine
    ts, answer = await _ask(bot)
    assert bot.slack.calls("chat.startStream"), "the answer was not streamed"
    element = _feedback(answer)
    assert {element["positive_button"]["value"], element["negative_button"]["value"]} == {
        f"helpful:{await _answer_uuid(bot, ts)}",
        f"unhelpful:{await _answer_uuid(bot, ts)}",
    }
    for button in ("positive_button", "negative_button"):
        assert element[button]["text"]["type"] == "plain_text" and element[button]["accessibility_label"]
    # Beside Start over and Show work, in the message's final form (written by chat.update).
    actions = [b for b in answer["blocks"] if b["type"] == "actions"]
    assert [e["action_id"] for e in actions[-1]["elements"]] == ["tutor_start_over", "tutor_show_work"]
    final = bot.slack.calls("chat.update")[-1]
    assert final.status == 200 and _has_feedback({"blocks": final.args["blocks"]})


async def test_a_posted_answer_carries_feedback_buttons(bot: Bot) -> None:
    bot.openai.latency, bot.openai.stream_span = 2.0, 1.0
    bot.openai.cut_streams(after=2, times=10)  # nothing shown live: the answer is posted
    ts, answer = await _ask(bot)
    (post,) = [c for c in bot.slack.calls("chat.postMessage") if c.args.get("thread_ts") == ts]
    assert post.status == 200 and _has_feedback({"blocks": post.args["blocks"]})
    assert _feedback(answer)["negative_button"]["value"] == f"unhelpful:{await _answer_uuid(bot, ts)}"


async def test_a_refused_stream_answer_carries_feedback_buttons(bot: Bot) -> None:
    bot.slack.refuse_streams = "channel_type_not_supported"
    bot.openai.latency, bot.openai.stream_span = 1.0, 0.5
    _, answer = await _ask(bot)
    assert _feedback(answer)["positive_button"]["value"].startswith("helpful:")


async def test_errors_carry_no_feedback_buttons(bot: Bot) -> None:
    bot.openai.queue(Turn(status="failed", error={"code": "server_error", "message": "boom"}, code=None))
    _, answer = await _ask(bot)
    assert any(b["type"] == "actions" for b in answer["blocks"])  # Start over stays
    assert not _has_feedback(answer)


def _buttons(**changes: Any) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "feedback_buttons",
        "action_id": "tutor_feedback",
        "positive_button": {"text": {"type": "plain_text", "text": "👍"}, "value": "helpful:x"},
        "negative_button": {"text": {"type": "plain_text", "text": "👎"}, "value": "unhelpful:x"},
    }
    element.update(changes)
    return element


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ({"type": "context_actions", "elements": [_buttons()] * 6}, "at most 5"),
        ({"type": "context_actions", "elements": []}, "at least 1"),
        ({"type": "context_actions", "elements": [_buttons(negative_button=None)]}, "negative_button"),
        (
            {
                "type": "context_actions",
                "elements": [_buttons(positive_button={"text": {"type": "plain_text", "text": "👍"}})],
            },
            "value",
        ),
        (
            {
                "type": "context_actions",
                "elements": [
                    _buttons(
                        positive_button={"text": {"type": "mrkdwn", "text": "*yes*"}, "value": "helpful:x"}
                    )
                ],
            },
            "plain_text",
        ),
        (
            {
                "type": "context_actions",
                "elements": [
                    _buttons(
                        negative_button={
                            "text": {"type": "plain_text", "text": "👎"},
                            "value": "unhelpful:x",
                            "accessibility_label": "x" * 76,
                        }
                    )
                ],
            },
            "accessibility_label",
        ),
        ({"type": "context_actions", "elements": [{"type": "button", "text": "no"}]}, "feedback_buttons"),
        ({"type": "actions", "elements": [_buttons()]}, "context_actions"),
    ],
)
async def test_the_fake_refuses_feedback_buttons_slack_would_refuse(
    fake_slack: FakeSlack, block: dict[str, Any], problem: str
) -> None:
    client = AsyncWebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url)
    good = {"type": "context_actions", "elements": [_buttons()]}
    await client.chat_postMessage(channel=CHANNEL, text="ok", blocks=[good])
    with pytest.raises(SlackApiError) as posted:
        await client.chat_postMessage(channel=CHANNEL, text="no", blocks=[block])
    assert posted.value.response["error"] == "invalid_blocks"
    assert any(problem in line for line in posted.value.response["errors"]), posted.value.response
    ts = fake_slack.messages(CHANNEL)[0]["ts"]
    with pytest.raises(SlackApiError) as updated:  # a streamed answer's final form is a chat.update
        await client.chat_update(channel=CHANNEL, ts=ts, text="no", blocks=[block])
    assert updated.value.response["error"] == "invalid_blocks"


# -- Clicks --------------------------------------------------------------------------------------


async def test_a_click_is_recorded_and_the_same_persons_next_click_replaces_it(bot: Bot) -> None:
    ts, answer = await _ask(bot)
    run = await _answer_uuid(bot, ts)
    await _click(bot, answer, ts, "positive_button")
    assert await _ratings(bot) == [(run, ALICE, "helpful", None)]
    await _click(bot, answer, ts, "negative_button")
    assert await _ratings(bot) == [(run, ALICE, "unhelpful", None)]
    await _click(bot, answer, ts, "positive_button", user=BOB)
    assert await _ratings(bot) == [(run, ALICE, "unhelpful", None), (run, BOB, "helpful", None)]
    async with bot.components.sessions() as session:
        rows = (await session.scalars(select(Feedback))).all()
    assert {(f.team_id, f.channel_id) for f in rows} == {(TEAM, CHANNEL)}
    assert all(f.created_at <= f.updated_at for f in rows)


async def test_a_click_in_another_channel_naming_an_answer_records_nothing(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    ts, answer = await _ask(bot)
    other, elsewhere = await _ask(bot, "Another question", channel=OTHER)
    forged = _feedback(answer)["positive_button"]["value"]
    await _click(bot, elsewhere, other, "positive_button", channel=OTHER, value=forged)
    await _click(bot, answer, ts, "positive_button", value="helpful:not-a-run")
    assert await _ratings(bot) == []
    assert sum("feedback" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING) == 2


async def test_a_thumbs_down_asks_what_was_wrong_and_stores_the_answer(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    ts, answer = await _ask(bot)
    run = await _answer_uuid(bot, ts)
    await _click(bot, answer, ts, "positive_button")
    assert bot.slack.calls("views.open") == []  # a thumbs-up asks nothing

    caplog.set_level(logging.INFO)  # what a deployment logs, and everything of the tutor's own
    caplog.set_level(logging.DEBUG, logger="bot")
    await _click(bot, answer, ts, "negative_button", trigger_id="13345224609.738474920.8088930838")
    (opened,) = await wait_for(lambda: bot.slack.calls("views.open"), message="no modal opened")
    assert opened.status == 200 and opened.args["trigger_id"] == "13345224609.738474920.8088930838"
    view = opened.args["view"]
    assert view["type"] == "modal" and view["private_metadata"] == run
    (field,) = [b for b in view["blocks"] if b["type"] == "input"]
    assert field["optional"] is True and field["element"]["multiline"] is True

    comment = "The sign flips when you subtract; x should be 1, not -1."
    values = {
        field["block_id"]: {field["element"]["action_id"]: {"type": "plain_text_input", "value": comment}}
    }
    status, body = await bot.send_form(view_submission(view["callback_id"], view["private_metadata"], values))
    assert status == 200 and not body.strip()  # an empty ack closes the modal
    assert await _ratings(bot) == [(run, ALICE, "unhelpful", comment)]
    leaked = [f"{r.name}: {r.getMessage()[:300]}" for r in caplog.records if comment in r.getMessage()]
    assert leaked == []

    # A second thumbs-down, sent without a word: the rating stays, the text is cleared.
    await _click(bot, answer, ts, "negative_button", trigger_id="2.2.2")
    await wait_for(lambda: len(bot.slack.calls("views.open")) == 2, message="no second modal")
    empty = {field["block_id"]: {field["element"]["action_id"]: {"type": "plain_text_input", "value": None}}}
    status, _ = await bot.send_form(view_submission(view["callback_id"], run, empty))
    assert status == 200
    assert await _ratings(bot) == [(run, ALICE, "unhelpful", None)]


async def test_changing_a_thumbs_down_to_up_drops_what_was_wrong(bot: Bot) -> None:
    ts, answer = await _ask(bot)
    run = await _answer_uuid(bot, ts)
    await _click(bot, answer, ts, "negative_button")
    (opened,) = await wait_for(lambda: bot.slack.calls("views.open"), message="no modal opened")
    view = opened.args["view"]
    (field,) = [b for b in view["blocks"] if b["type"] == "input"]
    values = {
        field["block_id"]: {field["element"]["action_id"]: {"type": "plain_text_input", "value": "wrong"}}
    }
    await bot.send_form(view_submission(view["callback_id"], run, values))
    assert await _ratings(bot) == [(run, ALICE, "unhelpful", "wrong")]
    await _click(bot, answer, ts, "positive_button")
    assert await _ratings(bot) == [(run, ALICE, "helpful", None)]


# -- The share of helpful answers ----------------------------------------------------------------


async def test_the_app_home_shows_the_share_of_helpful_answers(bot: Bot) -> None:
    first, a = await _ask(bot, "First")
    second, b = await _ask(bot, "Second")
    await _click(bot, a, first, "positive_button")
    await _click(bot, a, first, "negative_button", user=BOB)
    await _click(bot, b, second, "negative_button")
    await _click(bot, b, second, "positive_button")  # changed their mind: helpful
    event = {"type": "app_home_opened", "user": ALICE, "channel": DM, "tab": "home", "event_ts": new_ts()}
    await bot.send(envelope(event))
    (publish,) = await wait_for(lambda: bot.slack.calls("views.publish"), message="no Home published")
    texts = json.dumps(publish.args["view"]["blocks"], ensure_ascii=False)
    assert "Helpful: 67 % of 3 ratings (2 answers)" in texts


async def test_the_app_home_says_when_nothing_was_rated(bot: Bot) -> None:
    await _ask(bot)
    event = {"type": "app_home_opened", "user": ALICE, "channel": DM, "tab": "home", "event_ts": new_ts()}
    await bot.send(envelope(event))
    (publish,) = await wait_for(lambda: bot.slack.calls("views.publish"), message="no Home published")
    assert "No answers rated" in json.dumps(publish.args["view"]["blocks"])


async def test_the_feedback_summary_counts_one_workspace_channel_and_window(bot: Bot) -> None:
    now = utcnow()
    old = now - timedelta(days=40)

    def row(
        run: str, user: str, rating: str, *, team: str = TEAM, channel: str = CHANNEL, at: Any = now
    ) -> Feedback:
        return Feedback(
            run_uuid=run,
            team_id=team,
            channel_id=channel,
            user_id=user,
            rating=rating,
            created_at=at,
            updated_at=at,
        )

    async with bot.components.sessions.begin() as session:
        session.add_all(
            [
                row("r1", ALICE, "helpful"),
                row("r1", BOB, "unhelpful"),
                row("r2", ALICE, "helpful", channel=OTHER),
                row("r3", ALICE, "unhelpful", at=old),  # before the window
                row("r4", ALICE, "unhelpful", team="T0OTHER"),  # another workspace
            ]
        )
    since = now - timedelta(days=30)
    async with bot.components.sessions() as session:
        everywhere = await repo.feedback_summary(session, team_id=TEAM, since=since)
        here = await repo.feedback_summary(session, team_id=TEAM, channel_id=CHANNEL, since=since)
        nowhere = await repo.feedback_summary(session, team_id="T0NONE", since=since)
    assert (everywhere.ratings, everywhere.helpful, everywhere.answers) == (3, 2, 2)
    assert everywhere.helpful_share == pytest.approx(2 / 3)
    assert (here.ratings, here.helpful, here.answers) == (2, 1, 1)
    assert (nowhere.ratings, nowhere.helpful_share) == (0, None)


async def test_tutor_usage_shows_the_share_of_helpful_answers_here(bot: Bot) -> None:
    ts, answer = await _ask(bot)
    assert "No answers rated" in await _command(bot, "usage")
    await _click(bot, answer, ts, "positive_button")
    await _click(bot, answer, ts, "negative_button", user=BOB)
    assert "*Answers rated here:* Helpful: 50 % of 2 ratings (1 answer)" in await _command(bot, "usage")


async def test_forget_me_deletes_the_callers_ratings_and_every_rating_of_their_answers(bot: Bot) -> None:
    ts, answer = await _ask(bot)
    await _click(bot, answer, ts, "negative_button", user=BOB)  # Bob rates Alice's answer
    bobs_ts, bobs_answer = await _ask(bot, "Another question", user=BOB)
    await _click(bot, bobs_answer, bobs_ts, "positive_button")  # Alice rates Bob's answer
    assert len(await _ratings(bot)) == 2

    assert "Deleted" in await _command(bot, "forget me")
    assert await _ratings(bot) == []  # hers, and Bob's of her (now deleted) answer
