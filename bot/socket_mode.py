"""Socket Mode: connect in the background with a timeout per attempt and backoff, so the process
stays stoppable and `/healthz` can say it is not connected yet."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import send_async_response
from slack_bolt.adapter.socket_mode.internals import build_headers
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot import handlers
from bot.metrics import Metrics

log = logging.getLogger(__name__)


def log_fatal(reason: str) -> None:
    log.error("%s", reason)


#: apps.connections.open errors that no retry fixes: the app token is wrong.
FATAL_APP_TOKEN_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "invalid_token",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "not_allowed_token_type",
        "missing_scope",
        "no_permission",
    }
)
#: Transport failures: the SDK logs each failed (re)connect with a traceback; one line says it.
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, SlackApiError)


class _OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], _TRANSPORT_ERRORS):
            record.msg = f"{record.getMessage()} [{type(record.exc_info[1]).__name__}]"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_SOCKET_LOG = logging.getLogger("bot.socket_mode")
_SOCKET_LOG.addFilter(_OneLine())


class _SocketModeHandler(AsyncSocketModeHandler):
    """Bolt's handler, acknowledging envelopes whose payload Bolt couldn't route (see payload_problem):
    unacknowledged, Slack would deliver them again and again. Routable ones go through
    `handlers.dispatch`, as HTTP requests do."""

    metrics: Metrics

    async def handle(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        problem = handlers.payload_problem(req.payload)
        if problem is None:
            started = time.time()
            request = AsyncBoltRequest(mode="socket_mode", body=req.payload, headers=build_headers(req))
            response = await handlers.dispatch(self.app, request, self.metrics)
            await send_async_response(client, req, response, started)
            return
        log.warning("acknowledged a malformed %s envelope: %s", req.type, problem)
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))


class SocketModeLink:
    """Connects to Slack over Socket Mode in the background, with a timeout per attempt and backoff.

    Once connected, the SDK's client keeps the connection (it reconnects by itself). A token Slack
    refuses ends the process with one sentence (`on_fatal`).
    """

    ATTEMPT_TIMEOUT = 10.0
    FIRST_RETRY = 1.0
    MAX_RETRY = 30.0

    def __init__(self, bolt: AsyncApp, app_token: str, metrics: Metrics) -> None:
        self._bolt = bolt
        self._token = app_token
        self._metrics = metrics
        self._handler: _SocketModeHandler | None = None
        self.on_fatal: Callable[[str], None] = log_fatal

    async def connected(self) -> bool:
        return self._handler is not None and bool(await self._handler.client.is_connected())

    async def run(self) -> None:
        self._handler = _SocketModeHandler(self._bolt, self._token, logger=_SOCKET_LOG)
        self._handler.metrics = self._metrics
        client = self._handler.client
        delay = self.FIRST_RETRY
        attempt = 0
        while True:
            attempt += 1
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a cancellation.
                async with asyncio.timeout(self.ATTEMPT_TIMEOUT):
                    opened = await client.web_client.apps_connections_open(app_token=self._token)
                client.wss_uri = str(opened["url"])
                async with asyncio.timeout(self.ATTEMPT_TIMEOUT):
                    await client.connect()  # type: ignore[no-untyped-call]
                if await client.is_connected():
                    log.info("connected to Slack in Socket Mode")
                    return
                reason = "no connection"
            except SlackApiError as exc:
                error = str(exc.response.get("error"))
                if error in FATAL_APP_TOKEN_ERRORS:
                    self.on_fatal(
                        f"Slack refused SLACK_APP_TOKEN ({error}): use an app-level token (xapp-…) with "
                        "the connections:write scope, from Basic Information → App-Level Tokens in your "
                        "Slack app."
                    )
                    return
                reason = error
                with contextlib.suppress(TypeError, ValueError):
                    delay = max(delay, float(exc.response.headers.get("Retry-After", 0)))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = type(exc).__name__
            log.warning(
                "Socket Mode: connection attempt %d failed (%s); trying again in %.0fs",
                attempt,
                reason,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.MAX_RETRY)

    async def close(self) -> None:
        if self._handler is not None:
            await self._handler.close_async()  # type: ignore[no-untyped-call]
