"""Who the bot is in Slack (auth.test), known without a network call when a request arrives."""

from __future__ import annotations

import asyncio
import logging
import time

from slack_bolt.authorization import AuthorizeResult

from bot.errors import TutorError
from bot.slack_api import SlackGateway

log = logging.getLogger(__name__)


class BotIdentity:
    """The bot's user id, bot id and team (auth.test), resolved at startup and refreshed in the
    background; Bolt's `authorize` answers from here without network, so a Slack Web API outage
    never holds up (or fails) the ack of a question."""

    REFRESH_EVERY = 3600.0
    FIRST_RETRY = 0.5
    MAX_RETRY = 60.0
    TIMEOUT = 10.0

    def __init__(self, slack: SlackGateway, token: str) -> None:
        self._slack = slack
        self._token = token
        self.user_id: str | None = None
        self.bot_id: str | None = None
        self.team_id: str | None = None
        self.resolved = asyncio.Event()
        self._since = time.monotonic()

    def authorization(self, *, enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
        # Until auth.test answers, bot_user_id is unknown; the event's `authorizations` stand in.
        return AuthorizeResult(
            enterprise_id=enterprise_id,
            team_id=self.team_id or team_id,
            bot_user_id=self.user_id,
            bot_id=self.bot_id,
            bot_token=self._token,
        )

    def unresolved_for(self) -> float:
        """Seconds since the gateway was made, while auth.test has never answered; 0 once it has."""
        return 0.0 if self.resolved.is_set() else time.monotonic() - self._since

    async def refresh(self) -> None:
        async with asyncio.timeout(self.TIMEOUT):  # not wait_for: it can lose a cancellation on 3.11
            data = await self._slack.auth_test()
        self.user_id = _text(data.get("user_id"))
        self.bot_id = _text(data.get("bot_id"))
        self.team_id = _text(data.get("team_id"))
        if not self.resolved.is_set():
            log.info("Slack bot user %s (bot %s) in team %s", self.user_id, self.bot_id, self.team_id)
        self.resolved.set()

    async def keep_fresh(self) -> None:
        delay = self.FIRST_RETRY
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # a background loop: nothing may end it but cancellation
                # slack_api has logged a Slack error itself; a timeout or anything else it can't see.
                level = logging.DEBUG if isinstance(exc, TutorError) else logging.WARNING
                log.log(level, "auth.test failed (%s); trying again in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.MAX_RETRY)
                continue
            delay = self.FIRST_RETRY
            await asyncio.sleep(self.REFRESH_EVERY)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
