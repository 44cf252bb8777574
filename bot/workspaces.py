"""Which Slack token speaks to which workspace.

Single-workspace mode (SLACK_BOT_TOKEN): one gateway for everything, exactly as before. Distribution
mode (SLACK_CLIENT_ID + SLACK_CLIENT_SECRET): each workspace that installed the app through
`/slack/install` has its own bot token in `slack_bots` (written by slack_sdk's
AsyncSQLAlchemyInstallationStore at `/slack/oauth_redirect`), and `InstalledWorkspaces.gateway`
returns a SlackGateway bound to that token alone, cached per workspace, with the workspace's own
Pacer (Slack's rate limits are per workspace) and the process's metrics. A gateway is only ever
looked up by the team id of the run or request it serves, so one workspace's token never reaches
another's channels.

Tokens with rotation (`token_rotation_enabled`) are refreshed through oauth.v2.access
(grant_type=refresh_token, slack_sdk's AsyncTokenRotator) when they expire within
ROTATE_BEFORE_MINUTES, on the worker's and on Bolt's side alike, and the new ones are stored.
Bolt's `authorize` (`InstalledAuthorize`) answers from the stored row (bot user id, bot id), so
an ack makes no Slack call: only a refresh, every few hours per workspace, does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.authorization.async_authorize import AsyncAuthorize
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError, SlackTokenRotationError
from slack_sdk.oauth.installation_store import Bot
from slack_sdk.oauth.token_rotation.async_rotator import AsyncTokenRotator
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import errors
from bot.metrics import CallMetrics
from bot.pacing import Pacer
from bot.slack_api import SlackGateway, make_web_client
from db import repo

log = logging.getLogger(__name__)

#: A rotating token is refreshed when it expires within this many minutes (Bolt's default).
ROTATE_BEFORE_MINUTES = 120


class Workspaces(Protocol):
    """The Slack gateway for one workspace's runs and requests."""

    async def gateway(self, team_id: str) -> SlackGateway:
        """The gateway speaking with `team_id`'s token; errors.NotInstalled when it has none."""
        ...

    async def close(self) -> None: ...


class OneWorkspace:
    """Single-workspace mode: SLACK_BOT_TOKEN's gateway, whatever the team."""

    def __init__(self, slack: SlackGateway) -> None:
        self.slack = slack

    async def gateway(self, team_id: str) -> SlackGateway:
        return self.slack

    async def close(self) -> None:
        """The gateway is the process's own (Components.slack), closed with it."""


class InstalledWorkspaces:
    """Distribution mode: each installed workspace's own bot token, from the database."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        client_id: str,
        client_secret: str,
        api_url: str,
        pacer: Pacer,
        metrics: CallMetrics,
    ) -> None:
        self._sessions = sessions
        self._client_id = client_id
        self._api_url = api_url
        self._pacer = pacer
        self._metrics = metrics
        #: Calls made with no workspace's token: oauth.v2.access (installs, refreshes).
        self.app_client = make_web_client(None, api_url, pacer=pacer)
        self._rotator = AsyncTokenRotator(
            client_id=client_id, client_secret=client_secret, client=self.app_client
        )
        self._gateways: dict[str, SlackGateway] = {}
        #: Each workspace's own Slack rate limits (`Pacer.sibling`), kept across token changes.
        self._pacers: dict[str, Pacer] = {}
        self._retired: list[SlackGateway] = []
        self._refreshing: dict[str, asyncio.Lock] = {}

    async def bot(self, team_id: str) -> Bot | None:
        """The workspace's bot installation with a token that is good for a while, or None."""
        async with self._sessions() as session:
            found = await repo.latest_bot(session, client_id=self._client_id, team_id=team_id)
        if found is None or found[1].bot_refresh_token is None:
            return None if found is None else found[1]
        async with self._refreshing.setdefault(team_id, asyncio.Lock()):
            async with self._sessions() as session:  # another task may have refreshed it meanwhile
                found = await repo.latest_bot(session, client_id=self._client_id, team_id=team_id)
            if found is None:
                return None
            row_id, bot = found
            refreshed: Bot | None = await self._rotator.perform_bot_token_rotation(
                bot=bot, minutes_before_expiration=ROTATE_BEFORE_MINUTES
            )
            if refreshed is None:
                return bot
            async with self._sessions.begin() as session:
                await repo.save_rotated_bot(session, row_id=row_id, bot=refreshed)
            log.info("refreshed the bot token of workspace %s (token rotation)", team_id)
            return refreshed

    async def gateway(self, team_id: str) -> SlackGateway:
        try:
            bot = await self.bot(team_id)
        except SlackTokenRotationError as exc:
            log.warning("workspace %s: its bot token could not be refreshed (%s)", team_id, _error(exc))
            raise errors.NotInstalled(f"token refresh failed for {team_id}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure = errors.SlackDeliveryFailed(f"oauth.v2.access: {type(exc).__name__}")
            failure.retryable = True
            raise failure from None
        if bot is None or not bot.bot_token:
            raise errors.NotInstalled(f"workspace {team_id} has not installed the app")
        cached = self._gateways.get(team_id)
        if cached is not None and cached.client.token == bot.bot_token:
            return cached
        if cached is not None:
            self._retired.append(cached)  # a run may still hold it; closed at shutdown
        pacer = self._pacers.get(team_id) or self._pacers.setdefault(team_id, self._pacer.sibling())
        gateway = SlackGateway(
            make_web_client(bot.bot_token, self._api_url, pacer=pacer), metrics=self._metrics, pacer=pacer
        )
        self._gateways[team_id] = gateway
        return gateway

    def forget(self, team_id: str) -> None:
        """The workspace uninstalled the app: no gateway of its is handed out again."""
        gateway = self._gateways.pop(team_id, None)
        if gateway is not None:
            self._retired.append(gateway)

    async def teams(self) -> Sequence[str]:
        async with self._sessions() as session:
            return await repo.installed_teams(session, client_id=self._client_id)

    async def close(self) -> None:
        for gateway in [*self._gateways.values(), *self._retired]:
            await gateway.close()
        await self.app_client.connections.close()


class InstalledAuthorize(AsyncAuthorize):
    """Bolt's `authorize` in distribution mode: the request's workspace's stored bot token, bot
    user id and bot id (no auth.test per request); None, so Bolt acks and drops the request, for
    a workspace that has not installed the app."""

    def __init__(self, workspaces: InstalledWorkspaces) -> None:
        self._workspaces = workspaces

    async def __call__(
        self,
        *,
        context: AsyncBoltContext,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None,
        **_actor: Any,
    ) -> AuthorizeResult | None:
        try:
            bot = await self._workspaces.bot(team_id) if team_id else None
        except (SlackTokenRotationError, SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("workspace %s: its bot token could not be refreshed (%s)", team_id, _error(exc))
            return None
        if bot is None or not bot.bot_token:
            log.warning("ignored a request from workspace %s, which has not installed the app", team_id)
            return None
        return AuthorizeResult(
            enterprise_id=bot.enterprise_id,
            team_id=bot.team_id,
            bot_user_id=bot.bot_user_id,
            bot_id=bot.bot_id,
            bot_token=bot.bot_token,
            bot_scopes=bot.bot_scopes,
        )


def _error(exc: Exception) -> str:
    """Slack's error code, never the request (it holds the client secret and refresh token)."""
    cause = exc.api_error if isinstance(exc, SlackTokenRotationError) else exc
    if isinstance(cause, SlackApiError):
        return str(cause.response.get("error"))
    return type(cause).__name__


__all__ = ["InstalledAuthorize", "InstalledWorkspaces", "OneWorkspace", "Workspaces"]
