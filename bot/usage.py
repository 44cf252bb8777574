"""Usage and budgets: what each answer used, the daily budgets that keep a question from reaching
OpenAI, and the figures `/tutor usage` shows.

An answer's usage (the response's `usage`, its model, whether the code interpreter ran) is recorded
once per run, keyed on the run's uuid, when the poller hands the finished response to the replier;
a retried or resumed run records nothing twice. The rows hold counts, never content, so they are
kept longer than runs (TUTOR_USAGE_RETENTION_DAYS). Budgets count input + output tokens per UTC
day; a run's usage is known only when it finishes, so runs in flight can overshoot a budget.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import errors
from bot.ai import ModelReply
from bot.config import Settings
from bot.pricing import estimated_cost
from db import repo
from db.models import Run, utcnow

log = logging.getLogger(__name__)

#: The window of the helpful share (App Home, /tutor usage), in days.
FEEDBACK_DAYS = 30

#: Rows in the admin's lists of top channels and top users.
TOP = 5
BudgetScope = Literal["user", "channel"]


@dataclass(frozen=True)
class Figures:
    """Usage of one scope (a channel, a person, the workspace) over one period, all models together."""

    counts: repo.UsageTotals = field(default_factory=lambda: repo.UsageTotals(model=""))
    #: US dollars, estimated from `bot.pricing` for the models it knows; None if it knows none used.
    cost: Decimal | None = None
    #: Models used here that have no price (their tokens are in the counts, not in `cost`).
    unpriced: tuple[str, ...] = ()

    @property
    def answers(self) -> int:
        return self.counts.answers

    @property
    def tokens(self) -> int:
        return self.counts.total

    @classmethod
    def of(cls, totals: Iterable[repo.UsageTotals]) -> Figures:
        rows = list(totals)
        summed = {
            f.name: sum(getattr(t, f.name) for t in rows)
            for f in fields(repo.UsageTotals)
            if f.name != "model"
        }
        costs = [(t.model, _cost(t)) for t in rows]
        priced = [c for _, c in costs if c is not None]
        return cls(
            counts=repo.UsageTotals(model="", **summed),
            cost=sum(priced, Decimal(0)) if priced else None,
            unpriced=tuple(sorted({model for model, c in costs if c is None})),
        )


@dataclass(frozen=True)
class Period:
    today: Figures
    month: Figures


@dataclass(frozen=True)
class UsageReport:
    channel: Period
    me: Period
    #: Only for a workspace admin: the workspace, and its top channels and users this month.
    workspace: Period | None = None
    top_channels: list[tuple[str, Figures]] = field(default_factory=list)
    top_users: list[tuple[str, Figures]] = field(default_factory=list)
    #: The feedback buttons' ratings in the last FEEDBACK_DAYS: this channel's, and the workspace's
    #: (for an admin).
    channel_feedback: repo.FeedbackSummary | None = None
    workspace_feedback: repo.FeedbackSummary | None = None


@dataclass(frozen=True)
class Limits:
    """The daily token limits in force in one channel; 0 is no limit."""

    per_user: int
    #: True when the channel's own per-user limit replaces TUTOR_DAILY_TOKENS_PER_USER.
    per_user_here: bool
    per_channel: int
    workspace: int
    #: Tokens used today (UTC), against each limit.
    used_by_channel: int = 0
    used_by_workspace: int = 0


class UsageLedger:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._clock = clock

    async def record(self, session: AsyncSession, run: Run, reply: ModelReply) -> None:
        """The answer's usage, once per run (a second call for the same run changes nothing), in
        the caller's transaction: the one that marks the run answered."""
        if reply.usage is None:
            log.info("run %s: the response carried no usage; none recorded", run.id)
            return
        usage = reply.usage
        row = {
            "run_uuid": run.run_uuid,
            "team_id": run.team_id,
            "channel_id": run.channel_id,
            "user_id": run.user_id,
            "model": reply.model or "unknown",
            "input_tokens": usage.input_tokens,
            "cached_tokens": usage.cached_tokens,
            "output_tokens": usage.output_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "code_interpreter": reply.ran_code,
            "created_at": self._clock(),
        }
        await repo.record_usage(session, row=row)

    async def check(self, session: AsyncSession, *, team_id: str, channel_id: str, user_id: str) -> None:
        """BudgetExceeded when a daily budget in force here is used up (the person's first, then
        the channel's, then the workspace's). Only a limit in force is summed: with none, one
        primary-key lookup per question, in the caller's `session` (the run's preparation)."""
        day = self._day()
        own = await repo.get_channel_budget(session, team_id=team_id, channel_id=channel_id)
        own_per_user = own.tokens_per_user if own is not None else None
        per_user = self._settings.tutor_daily_tokens_per_user if own_per_user is None else own_per_user
        per_channel = (own.tokens_per_channel or 0) if own is not None else 0
        workspace = self._settings.tutor_daily_tokens_per_workspace
        checks: list[tuple[str, int, str | None, str | None]] = [
            ("user", per_user, None, user_id),
            ("channel", per_channel, channel_id, None),
            ("workspace", workspace, None, None),
        ]
        for scope, limit, channel, user in checks:
            if not limit:
                continue
            used = await repo.tokens_used(
                session, team_id=team_id, since=day, channel_id=channel, user_id=user
            )
            if used >= limit:
                raise self._exceeded(scope, day)

    async def limits(self, *, team_id: str, channel_id: str) -> Limits:
        async with self._sessions() as session:
            return await self._limits(session, team_id=team_id, channel_id=channel_id, day=self._day())

    async def set_limit(
        self, *, team_id: str, channel_id: str, scope: BudgetScope, tokens: int | None
    ) -> None:
        """A channel's own daily limit (per person, or for the whole channel); None removes it."""
        async with self._sessions.begin() as session:
            await repo.set_channel_budget(
                session, team_id=team_id, channel_id=channel_id, scope=scope, tokens=tokens
            )

    async def report(self, *, team_id: str, channel_id: str, user_id: str, workspace: bool) -> UsageReport:
        """Today and this month (UTC) for the channel and the person; with `workspace`, the
        workspace's figures and its top channels and users this month too."""
        day = self._day()
        month = day.replace(day=1)
        async with self._sessions() as session:

            async def period(*, channel: str | None = None, user: str | None = None) -> Period:
                rows = await repo.usage_totals(
                    session, team_id=team_id, since=month, channel_id=channel, user_id=user
                )
                today = await repo.usage_totals(
                    session, team_id=team_id, since=day, channel_id=channel, user_id=user
                )
                return Period(today=Figures.of(today), month=Figures.of(rows))

            channel, me = await period(channel=channel_id), await period(user=user_id)
            rated_since = self._clock() - timedelta(days=FEEDBACK_DAYS)
            rated_here = await repo.feedback_summary(
                session, team_id=team_id, channel_id=channel_id, since=rated_since
            )
            if not workspace:
                return UsageReport(channel=channel, me=me, channel_feedback=rated_here)
            everyone = await period()
            channels = await repo.usage_by(session, team_id=team_id, since=month, by="channel")
            users = await repo.usage_by(session, team_id=team_id, since=month, by="user")
            rated = await repo.feedback_summary(session, team_id=team_id, since=rated_since)
        return UsageReport(channel, me, everyone, _top(channels), _top(users), rated_here, rated)

    def resets_at(self) -> datetime:
        """When today's budgets start again: the next 00:00 UTC."""
        return self._day() + timedelta(days=1)

    def _day(self) -> datetime:
        return self._clock().replace(hour=0, minute=0, second=0, microsecond=0)

    def _exceeded(self, scope: str, day: datetime) -> errors.BudgetExceeded:
        log.info("question refused: the %s's daily token budget is used up", scope)
        return errors.BudgetExceeded.of(scope, int((day + timedelta(days=1)).timestamp()))

    async def _limits(self, session: AsyncSession, *, team_id: str, channel_id: str, day: datetime) -> Limits:
        own = await repo.get_channel_budget(session, team_id=team_id, channel_id=channel_id)
        own_per_user = own.tokens_per_user if own is not None else None
        return Limits(
            per_user=self._settings.tutor_daily_tokens_per_user if own_per_user is None else own_per_user,
            per_user_here=own_per_user is not None,
            per_channel=(own.tokens_per_channel or 0) if own is not None else 0,
            workspace=self._settings.tutor_daily_tokens_per_workspace,
            used_by_channel=await repo.tokens_used(
                session, team_id=team_id, since=day, channel_id=channel_id
            ),
            used_by_workspace=await repo.tokens_used(session, team_id=team_id, since=day),
        )


def _cost(totals: repo.UsageTotals) -> Decimal | None:
    return estimated_cost(
        totals.model,
        input_tokens=totals.input_tokens,
        cached_tokens=totals.cached_tokens,
        output_tokens=totals.output_tokens,
    )


def _top(rows: list[tuple[str, repo.UsageTotals]]) -> list[tuple[str, Figures]]:
    """The TOP largest by tokens, each summed over its models."""
    by_key: dict[str, list[repo.UsageTotals]] = defaultdict(list)
    for key, totals in rows:
        by_key[key].append(totals)
    figures = [(key, Figures.of(totals)) for key, totals in by_key.items()]
    return sorted(figures, key=lambda item: -item[1].tokens)[:TOP]
