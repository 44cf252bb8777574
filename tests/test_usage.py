"""Usage and budgets end to end: what each answer used is recorded once and summed per channel,
person and workspace (`/tutor usage`); daily budgets stop a question before it reaches OpenAI."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from bot.handlers.commands import usage_text
from bot.pricing import estimated_cost
from bot.retention import Retention
from bot.usage import Figures, Period, UsageLedger, UsageReport
from db import repo
from db.migrate import upgrade
from db.models import Run, UsageRecord
from tests.conftest import Bot, BotFactory
from tests.fakes import wait_for
from tests.slack_payloads import ALICE, CHANNEL, mention, new_ts
from tests.test_commands import _command
from tests.test_exactly_once import INTERNAL_ERROR

#: Its PostgreSQL databases start migrated (a copy of conftest's template); upgrade finds nothing to do.
pytestmark = pytest.mark.migrated_postgres

BOB = "U0BOB"
PHYSICS = "C0PHYS"


async def _ask(bot: Bot, text: str, *, user: str = ALICE, channel: str = CHANNEL) -> str:
    """A mention that gets a new thread; returns its ts once every run is finished."""
    ts = new_ts()
    before = len(await bot.runs())
    await bot.send(mention(text, ts=ts, user=user, channel=channel))
    await bot.wait_runs_finished(before + 1)
    return ts


async def _records(bot: Bot) -> list[UsageRecord]:
    async with bot.components.sessions() as session:
        return list((await session.scalars(select(UsageRecord).order_by(UsageRecord.id))).all())


def _fake_usage(bot: Bot, run: Run) -> dict[str, Any]:
    """The usage the fake OpenAI returned for this run's response."""
    assert run.response_id is not None
    usage: dict[str, Any] = bot.openai.responses[run.response_id].body["usage"]
    return usage


def _row(run_uuid: str, at: datetime, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """A usage row of Alice's in the math channel (for rows dated without running answers)."""
    return {
        "run_uuid": run_uuid,
        "team_id": "T0001",
        "channel_id": CHANNEL,
        "user_id": ALICE,
        "model": "gpt-6-luna",
        "input_tokens": input_tokens,
        "cached_tokens": 0,
        "output_tokens": output_tokens,
        "reasoning_tokens": 0,
        "code_interpreter": False,
        "created_at": at,
    }


def _tokens(bot: Bot, runs: list[Run]) -> int:
    return sum(int(_fake_usage(bot, run)["total_tokens"]) for run in runs)


async def test_usage_of_each_answer_is_recorded_and_summed_per_channel_and_person(bot: Bot) -> None:
    await _ask(bot, "What is 2 + 2?")
    await _ask(bot, "Explain the quadratic formula, please, in a few steps")
    await _ask(bot, "What is 3 * 7?", user=BOB)
    await _ask(bot, "What is a force?", channel=PHYSICS)
    runs = await bot.runs()

    records = {r.run_uuid: r for r in await _records(bot)}
    assert set(records) == {run.run_uuid for run in runs}
    for run in runs:
        record, usage = records[run.run_uuid], _fake_usage(bot, run)
        assert (record.channel_id, record.user_id, record.team_id) == (run.channel_id, run.user_id, "T0001")
        assert record.model == "gpt-6-luna"
        assert record.input_tokens == usage["input_tokens"]
        assert record.cached_tokens == usage["input_tokens_details"]["cached_tokens"]
        assert record.output_tokens == usage["output_tokens"]
        assert record.reasoning_tokens == usage["output_tokens_details"]["reasoning_tokens"]
        assert record.code_interpreter is True  # the fake's default turn runs Python

    in_math = [r for r in runs if r.channel_id == CHANNEL]
    alices = [r for r in runs if r.user_id == ALICE]
    text = await _command(bot, "usage")
    assert f"*This channel:* today {_tokens(bot, in_math):,} tokens (3 answers, ≈ $" in text
    assert f"*You:* today {_tokens(bot, alices):,} tokens (3 answers, ≈ $" in text
    assert "estimate" in text and "billed separately" in text
    # Alice is no admin: no workspace figures, no lists of other people.
    assert "Workspace" not in text and "Top" not in text and BOB not in text

    bobs = await _command(bot, "usage", channel=PHYSICS, user=BOB)
    assert f"*This channel:* today {_tokens(bot, runs[3:]):,} tokens (1 answer, ≈ $" in bobs
    assert f"*You:* today {_tokens(bot, runs[2:3]):,} tokens (1 answer, ≈ $" in bobs


async def test_an_admin_sees_the_workspace_and_its_top_channels_and_people(bot: Bot) -> None:
    bot.slack.admins.add(BOB)
    await _ask(bot, "What is 2 + 2?")
    await _ask(bot, "Explain the quadratic formula, please, in a few steps")
    await _ask(bot, "What is a force?", user=BOB, channel=PHYSICS)
    runs = await bot.runs()

    text = await _command(bot, "usage", user=BOB)
    assert f"*Workspace:* today {_tokens(bot, runs):,} tokens (3 answers, ≈ $" in text
    top_channels = next(line for line in text.splitlines() if line.startswith("*Top channels"))
    assert top_channels.index(f"<#{CHANNEL}> {_tokens(bot, runs[:2]):,}") < top_channels.index(
        f"<#{PHYSICS}> {_tokens(bot, runs[2:]):,}"
    )
    top_people = next(line for line in text.splitlines() if line.startswith("*Top people"))
    assert f"<@{ALICE}> {_tokens(bot, runs[:2]):,}" in top_people and f"<@{BOB}>" in top_people
    assert "Workspace" not in await _command(bot, "usage", user=ALICE)


async def test_a_question_over_budget_gets_one_sentence_and_never_reaches_openai(
    start_bot: BotFactory,
) -> None:
    bot = await start_bot(tutor_daily_tokens_per_user=10)
    await _ask(bot, "What is 2 + 2?")  # nothing used yet: answered, and over the limit now
    creates, conversations = len(bot.openai.calls("POST /v1/responses")), len(bot.openai.calls("POST"))

    ts = await _ask(bot, "And what is 3 + 3?")
    (reply,) = bot.slack.messages(CHANNEL, ts)
    assert reply["text"].startswith("You've used up your tutor budget for today")
    assert "didn't send this question to OpenAI" in reply["text"] and "<!date^" in reply["text"]
    assert len(bot.openai.calls("POST /v1/responses")) == creates == 1
    assert len(bot.openai.calls("POST")) == conversations  # no conversation, container or file either
    (_, refused) = await bot.runs()
    assert refused.error_code == "budget_exceeded"
    assert len(await _records(bot)) == 1


async def test_budget_changes_are_refused_for_someone_who_is_not_an_admin(bot: Bot) -> None:
    answer = await _command(bot, "budget user 100")
    assert answer == "Only a workspace admin can change the tutor's budgets, so nothing changed."
    assert "• Per person: no limit (the workspace setting)" in await _command(bot, "budget")
    await _ask(bot, "Still answered?")
    assert len(bot.openai.calls("POST /v1/responses$")) == 1


async def test_a_channels_own_budget_applies_in_that_channel_only(bot: Bot) -> None:
    bot.slack.admins.add(BOB)
    for typo in ("budget user lots", "budget user 99999999999999999999", "budget everyone 5"):
        assert "`/tutor budget user <tokens>" in await _command(bot, typo, user=BOB)
    answer = await _command(bot, "budget user 10", user=BOB)
    assert "• Per person: 10 (this channel's own limit)" in answer
    await _ask(bot, "What is 2 + 2?")  # answered: nothing used yet today

    refused = await _ask(bot, "And 3 + 3?")
    assert bot.slack.messages(CHANNEL, refused)[0]["text"].startswith("You've used up your tutor budget")
    elsewhere = await _ask(bot, "What is a force?", channel=PHYSICS)  # no limit there
    assert "budget" not in bot.slack.messages(PHYSICS, elsewhere)[0]["text"]
    assert len(bot.openai.calls("POST /v1/responses$")) == 2

    # A channel-wide limit counts everyone asking there.
    await _command(bot, "budget channel 5k", user=BOB)
    assert "• This channel: 5,000" in await _command(bot, "budget", channel=CHANNEL)
    assert "• This channel: no limit" in await _command(bot, "budget", channel=PHYSICS)

    assert "(the workspace setting)" in await _command(bot, "budget user default", user=BOB)
    again = await _ask(bot, "And 3 + 3, now?")
    assert "budget" not in bot.slack.messages(CHANNEL, again)[0]["text"]
    assert len(bot.openai.calls("POST /v1/responses$")) == 3

    await _command(bot, "budget channel 10", channel=PHYSICS, user=BOB)
    bobs = await _ask(bot, "What is work?", user=BOB, channel=PHYSICS)
    (refusal,) = bot.slack.messages(PHYSICS, bobs)
    assert refusal["text"].startswith("This channel has used up its tutor budget")
    assert len(bot.openai.calls("POST /v1/responses$")) == 3


async def test_the_workspace_budget_counts_every_channel(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_daily_tokens_per_workspace=10)
    await _ask(bot, "What is 2 + 2?")
    ts = await _ask(bot, "What is a force?", user=BOB, channel=PHYSICS)
    (refusal,) = bot.slack.messages(PHYSICS, ts)
    assert refusal["text"].startswith("This workspace has used up its tutor budget")
    assert "• Workspace: 10 (" in await _command(bot, "budget")


async def test_usage_is_recorded_once_when_the_reply_is_retried(bot: Bot) -> None:
    bot.slack.refuse_streams = "channel_type_not_supported"  # the answer is posted, then edited
    # Slack posts the message but answers 500: the reply step runs again (and looks for its post).
    bot.slack.fail_next("chat.postMessage", status=500, body=INTERNAL_ERROR, after_handling=True)
    await _ask(bot, "What is 3 + 4?")
    await wait_for(lambda: bot.slack.calls("conversations.replies"), message="the reply was not retried")
    (run,) = await bot.runs()
    (record,) = await _records(bot)
    assert record.run_uuid == run.run_uuid
    assert record.input_tokens + record.output_tokens == _fake_usage(bot, run)["total_tokens"]


async def test_today_and_this_month_are_utc_days_and_months(bot: Bot) -> None:
    now = datetime(2026, 12, 15, 10, 30, tzinfo=UTC)
    sessions, settings = bot.components.sessions, bot.components.settings
    ledger = UsageLedger(sessions=sessions, settings=settings, clock=lambda: now)
    when = [datetime(2026, 12, 15, 0, 0, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)]
    when.append(datetime(2026, 11, 30, 23, 59, tzinfo=UTC))  # last month: not counted
    async with sessions.begin() as session:
        for number, at in enumerate(when):
            assert await repo.record_usage(session, row=_row(f"run-{number}", at, 1000, 100))
    report = await ledger.report(team_id="T0001", channel_id=CHANNEL, user_id=ALICE, workspace=False)
    assert (report.me.today.answers, report.me.today.tokens) == (1, 1100)
    assert (report.me.month.answers, report.me.month.tokens) == (2, 2200)
    assert ledger.resets_at() == datetime(2026, 12, 16, tzinfo=UTC)


async def test_usage_rows_outlive_the_runs_and_are_pruned_after_their_own_retention(bot: Bot) -> None:
    now = datetime(2026, 12, 15, tzinfo=UTC)
    async with bot.components.sessions.begin() as session:
        for number, days in enumerate((40, 401)):
            await repo.record_usage(session, row=_row(f"run-{number}", now - timedelta(days=days), 10, 1))
    retention = Retention(bot.components.engine, days=30, usage_days=400, clock=lambda: now)
    assert (await retention.prune()).usage == 1
    assert [r.run_uuid for r in await _records(bot)] == ["run-0"]


def test_prices_come_from_one_table_and_unknown_models_have_no_cost() -> None:
    mtok = 1_000_000  # one million tokens
    luna = estimated_cost("gpt-6-luna", input_tokens=mtok, cached_tokens=mtok // 2, output_tokens=mtok)
    assert luna == Decimal("0.05") + Decimal("0.005") + Decimal("0.50")
    assert estimated_cost("gpt-6-luna-2026-10-01", input_tokens=10, cached_tokens=0, output_tokens=0)
    assert estimated_cost("my-fine-tune", input_tokens=10, cached_tokens=0, output_tokens=10) is None

    unknown = Figures.of([repo.UsageTotals("my-fine-tune", answers=1, input_tokens=1200, output_tokens=34)])
    nothing = Figures.of([])
    text = usage_text(UsageReport(channel=Period(nothing, unknown), me=Period(nothing, nothing)))
    assert "this month 1,234 tokens (1 answer, no price for `my-fine-tune`)" in text
    assert "$" not in text.split("_Cost")[0]


@pytest.mark.postgres
async def test_usage_and_budgets_on_postgres(start_bot: BotFactory, postgres_url: str) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    bot = await start_bot(url=postgres_url)
    await test_a_channels_own_budget_applies_in_that_channel_only(bot)
    answered = [run for run in await bot.runs() if run.response_id]
    assert len(await _records(bot)) == len(answered) == 3
    text = await _command(bot, "usage", user=BOB)
    assert f"*Workspace:* today {_tokens(bot, answered):,} tokens (3 answers, ≈ $" in text
