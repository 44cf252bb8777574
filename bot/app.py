"""Builds the Bolt app, the aiohttp server and the run-poller, and owns their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot import handlers
from bot.ai import OpenAIGateway
from bot.config import Settings
from bot.errors import ConfigError, TutorError
from bot.poller import Poller
from bot.reply import Replier
from bot.slack_api import SlackGateway, make_web_client
from bot.tutor import Tutor
from db.session import make_engine, make_sessionmaker

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
#: How long startup waits for auth.test before serving anyway (it keeps trying in the background).
IDENTITY_WAIT = 2.0


def _log_fatal(reason: str) -> None:
    log.error("%s", reason)


@dataclass
class Components:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    ai: OpenAIGateway
    slack: SlackGateway
    tutor: Tutor
    poller: Poller
    bolt: AsyncApp
    identity: BotIdentity
    #: Set when SLACK_APP_TOKEN is: the Socket Mode connection.
    socket: SocketModeLink | None = None
    #: Called with one sentence when the process cannot go on (e.g. Slack refused the app token).
    on_fatal: Callable[[str], None] = field(default=_log_fatal)

    async def close(self) -> None:
        await self.ai.close()
        await self.slack.close()
        await self.engine.dispose()


def build(settings: Settings) -> Components:
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    token = settings.slack_bot_token.get_secret_value()
    client = make_web_client(token, settings.slack_api_url)
    slack = SlackGateway(client)
    ai = OpenAIGateway(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        timeout=settings.tutor_openai_timeout,
    )
    tutor = Tutor(sessions=sessions, ai=ai, slack=slack, settings=settings)
    replier = Replier(sessions=sessions, ai=ai, slack=slack, max_file_mb=settings.tutor_max_file_mb)
    poller = Poller(sessions=sessions, tutor=tutor, replier=replier, ai=ai, settings=settings)
    identity = BotIdentity(slack, token)

    async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
        # A plain function: Bolt picks its arguments by name (a bound method's `self` confuses it).
        return identity.authorization(enterprise_id=enterprise_id, team_id=team_id)

    bolt = AsyncApp(
        # Bolt's client carries no token: each request's comes from `authorize` (a token here would
        # make Bolt run auth.test itself, lazily, on the first request and before any middleware).
        client=AsyncWebClient(
            base_url=client.base_url, timeout=client.timeout, retry_handlers=list(client.retry_handlers)
        ),
        authorize=authorize,
        # Signatures are checked by the HTTP endpoint (web_app), on the raw bytes, before anything
        # is decoded; Socket Mode carries none. So Bolt needs no signing secret.
        request_verification_enabled=False,
        # Requests no listener handles reach handlers.on_error: 200 and one line, not 404.
        raise_error_for_unhandled_request=True,
    )
    handlers.register(bolt, tutor)
    socket = None
    if settings.slack_app_token is not None:
        socket = SocketModeLink(bolt, settings.slack_app_token.get_secret_value())
    components = Components(settings, engine, sessions, ai, slack, tutor, poller, bolt, identity, socket)
    if socket is not None:
        socket.on_fatal = lambda reason: components.on_fatal(reason)
    return components


class _NotAboutTheEnvToken(logging.Filter):
    """AsyncApp reads SLACK_BOT_TOKEN from the environment by itself and warns that the token of the
    client it was given wins; here the client has deliberately none (see `authorize`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != warning_client_prioritized_and_token_skipped()


logging.getLogger("slack_bolt.AsyncApp").addFilter(_NotAboutTheEnvToken())


# -- Who the bot is -------------------------------------------------------------------------------


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

    def authorization(self, *, enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
        # Until auth.test answers, bot_user_id is unknown; the event's `authorizations` stand in.
        return AuthorizeResult(
            enterprise_id=enterprise_id,
            team_id=self.team_id or team_id,
            bot_user_id=self.user_id,
            bot_id=self.bot_id,
            bot_token=self._token,
        )

    async def refresh(self) -> None:
        data = await asyncio.wait_for(self._slack.auth_test(), self.TIMEOUT)
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


# -- Socket Mode ----------------------------------------------------------------------------------

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
    unacknowledged, Slack would deliver them again and again."""

    async def handle(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        problem = handlers.payload_problem(req.payload)
        if problem is None:
            await super().handle(client, req)  # type: ignore[arg-type]
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

    def __init__(self, bolt: AsyncApp, app_token: str) -> None:
        self._bolt = bolt
        self._token = app_token
        self._handler: _SocketModeHandler | None = None
        self.on_fatal: Callable[[str], None] = _log_fatal

    async def connected(self) -> bool:
        return self._handler is not None and bool(await self._handler.client.is_connected())

    async def run(self) -> None:
        self._handler = _SocketModeHandler(self._bolt, self._token, logger=_SOCKET_LOG)
        client = self._handler.client
        delay = self.FIRST_RETRY
        attempt = 0
        while True:
            attempt += 1
            try:
                opened = await asyncio.wait_for(
                    client.web_client.apps_connections_open(app_token=self._token), self.ATTEMPT_TIMEOUT
                )
                client.wss_uri = str(opened["url"])
                await asyncio.wait_for(client.connect(), self.ATTEMPT_TIMEOUT)  # type: ignore[no-untyped-call]
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


# -- HTTP -----------------------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


class RawBodyVerifier(SignatureVerifier):
    """slack_sdk's verifier (staleness, constant-time compare) over the raw request bytes: Slack
    signs bytes, and a body that isn't UTF-8 must fail (or pass) on its signature, not in a decoder."""

    def generate_signature(self, *, timestamp: str, body: str | bytes) -> str | None:
        raw = body.encode() if isinstance(body, str) else body
        base = b"v0:" + timestamp.encode() + b":" + raw
        return "v0=" + hmac.new(self.signing_secret.encode(), base, hashlib.sha256).hexdigest()


def signature_problem(verifier: SignatureVerifier, body: bytes, headers: Mapping[str, str]) -> str | None:
    """Why this request is not Slack's (None when its signature is good and fresh)."""
    timestamp = headers.get("X-Slack-Request-Timestamp")
    signature = headers.get("X-Slack-Signature")
    if timestamp is None or signature is None:
        return "no signature"
    if not _TIMESTAMP.fullmatch(timestamp):
        return "a timestamp that is not a number"
    if not _SIGNATURE.fullmatch(signature):
        return "a malformed signature"
    if not verifier.is_valid(body, timestamp, signature):
        return "a wrong or stale signature"
    return None


def is_ssl_check(body: bytes) -> bool:
    """`ssl_check=1&token=…`, which Bolt answers before any signature check too."""
    if len(body) > 1024 or b"ssl_check" not in body:
        return False
    return dict(parse_qsl(body.decode("utf-8", "replace"))).get("ssl_check") == "1"


class MalformedRequest(ValueError):
    pass


def bolt_request(body: bytes, query: str, headers: Mapping[str, str]) -> AsyncBoltRequest:
    """The signed body as Bolt's request; MalformedRequest when it is not something Bolt can route."""
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest("the body is not UTF-8") from None
    try:
        request = AsyncBoltRequest(body=decoded, query=query, headers=dict(headers))
    except Exception as exc:  # parsing what the sender wrote: JSON, form or payload= errors
        raise MalformedRequest(f"the body does not parse ({type(exc).__name__})") from None
    problem = handlers.payload_problem(request.body)
    if problem is not None:
        raise MalformedRequest(problem)
    return request


def web_app(components: Components, *, with_worker: bool) -> web.Application:
    """`POST /slack/events` (events, commands, interactivity) and `GET /healthz`."""
    app = web.Application()
    bolt = components.bolt
    secret = components.settings.slack_signing_secret
    verifier = RawBodyVerifier(secret.get_secret_value()) if secret else None

    async def slack_events(request: web.Request) -> web.Response:
        body = await request.read()
        problem = signature_problem(verifier, body, request.headers) if verifier else "no signing secret"
        if problem is not None:
            if is_ssl_check(body):
                return web.Response(status=200)  # Slack's TLS probe of command URLs: unsigned, empty 200
            log.warning("rejected a request to %s with %s (401)", EVENTS_PATH, problem)
            return web.Response(status=401)
        try:
            bolt_req = bolt_request(body, request.query_string, request.headers)
        except MalformedRequest as exc:
            # Signed, so from Slack: a retry would bring the same body again.
            log.warning("acknowledged a signed request Bolt can't route: %s", exc)
            return web.Response(status=200)
        return await to_aiohttp_response(await bolt.async_dispatch(bolt_req))

    async def healthz(_request: web.Request) -> web.Response:
        try:
            async with components.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("health check: database unreachable (%s)", type(exc).__name__)
            return web.json_response({"ok": False, "database": "unreachable"}, status=503)
        status: dict[str, Any] = {"ok": True, "database": "ok", "worker": with_worker}
        if components.socket is not None:
            connected = await components.socket.connected()
            status.update(ok=connected, slack="connected" if connected else "connecting")
            if not connected:
                return web.json_response(status, status=503)
        return web.json_response(status)

    if not components.settings.socket_mode:
        app.router.add_post(EVENTS_PATH, slack_events)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(_lifecycle(components, with_worker=with_worker))
    return app


def _lifecycle(
    components: Components, *, with_worker: bool
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(components.identity.keep_fresh(), name="slack-identity")
        ]
        if with_worker:
            components.tutor.wake = components.poller.wake
            tasks.append(asyncio.create_task(components.poller.run_forever(), name="run-poller"))
        if components.socket is not None:
            tasks.append(asyncio.create_task(components.socket.run(), name="socket-mode"))
        # Usually answered in milliseconds; if Slack is down, serve anyway (questions are stored).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(components.identity.resolved.wait(), IDENTITY_WAIT)
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if components.socket is not None:
            await components.socket.close()
        await components.close()

    return lifecycle


async def serve(settings: Settings, *, with_web: bool, with_worker: bool) -> None:
    """Run until SIGTERM/SIGINT: HTTP (or Socket Mode) and/or the run-poller in one event loop.

    Raises ConfigError when the process can't go on (Slack refused the app token).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    components = build(settings)
    if not with_web:
        components.tutor.wake = components.poller.wake
        poller = asyncio.create_task(components.poller.run_forever(), name="run-poller")
        await stop.wait()
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await components.close()
        return
    fatal: list[str] = []

    def give_up(reason: str) -> None:
        fatal.append(reason)
        stop.set()

    components.on_fatal = give_up
    runner = web.AppRunner(web_app(components, with_worker=with_worker), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host="0.0.0.0", port=settings.port)  # noqa: S104 - a server
    await site.start()
    log.info("listening on :%s (%s)", settings.port, "Socket Mode" if settings.socket_mode else EVENTS_PATH)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
    if fatal:
        raise ConfigError(fatal[0])
