"""Builds the Bolt app, the aiohttp server and the run-poller, and owns their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_bolt.oauth.async_oauth_flow import AsyncOAuthFlow
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.oauth.installation_store.sqlalchemy import AsyncSQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import AsyncSQLAlchemyOAuthStateStore
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot import handlers
from bot.ai import OpenAIGateway
from bot.config import Settings
from bot.errors import ConfigError
from bot.handlers.http import MalformedRequest, RawBodyVerifier, bolt_request, is_ssl_check, signature_problem
from bot.identity import BotIdentity
from bot.manifest import BOT_SCOPES
from bot.metrics import CONTENT_TYPE, Metrics
from bot.notifier import WakeUp
from bot.pacing import Pacer
from bot.poller import Crew, Crews, Poller
from bot.prepare import RunPreparer
from bot.reply import Replier
from bot.retention import Retention
from bot.slack_api import SlackGateway, make_web_client
from bot.socket_mode import SocketModeLink, log_fatal
from bot.tutor import Tutor
from bot.workspaces import InstalledAuthorize, InstalledWorkspaces, OneWorkspace, Workspaces
from db.session import make_engine, make_sessionmaker

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
#: How long an install started at /slack/install may take to come back to /slack/oauth_redirect.
OAUTH_STATE_SECONDS = 600
#: How long startup waits for auth.test before serving anyway (it keeps trying in the background).
IDENTITY_WAIT = 2.0
#: /healthz gives the database this long to answer `SELECT 1` (a load balancer's probe has a timeout).
HEALTH_DB_TIMEOUT = 2.0
#: How long a background task may take to stop beyond the poller's grace period (it bounds its own
#: database steps to 5 s each); past it the process stops anyway, saying which task hung.
STOP_MARGIN = 15.0


@dataclass
class Components:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    ai: OpenAIGateway
    #: Single-workspace mode: SLACK_BOT_TOKEN's gateway. Distribution mode: one with no token
    #: (runs and requests speak through `workspaces`).
    slack: SlackGateway
    tutor: Tutor
    poller: Poller
    bolt: AsyncApp
    identity: BotIdentity
    #: Set when SLACK_APP_TOKEN is: the Socket Mode connection.
    socket: SocketModeLink | None = None
    #: Called with one sentence when the process cannot go on (e.g. Slack refused the app token).
    on_fatal: Callable[[str], None] = field(default=log_fatal)
    metrics: Metrics = field(default_factory=Metrics)
    workspaces: Workspaces | None = None
    #: Distribution mode: Bolt's OAuth flow (GET /slack/install, GET /slack/oauth_redirect).
    oauth: AsyncOAuthFlow | None = None

    async def close(self) -> None:
        await self.ai.close()
        await self.slack.close()
        if self.workspaces is not None:
            await self.workspaces.close()
        # Connections to a database that went away must not hold up a stopping process.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self.engine.dispose()


def build(settings: Settings) -> Components:
    engine = make_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    sessions = make_sessionmaker(engine)
    metrics = Metrics()
    metrics.track_queue(engine)
    pacer = Pacer(rate=settings.tutor_slack_channel_rate, burst=settings.tutor_slack_channel_burst)
    ai = OpenAIGateway(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        timeout=settings.tutor_openai_timeout,
        metrics=metrics.openai,
    )
    wake = WakeUp()
    slack, identity, workspaces, oauth = _slack_side(settings, sessions, engine, pacer, metrics)
    drop_gateway = workspaces.forget if isinstance(workspaces, InstalledWorkspaces) else None
    tutor = Tutor(
        sessions=sessions, workspaces=workspaces, settings=settings, wake=wake, drop_gateway=drop_gateway
    )

    def crew(gateway: SlackGateway) -> Crew:
        replier = Replier(
            sessions=sessions,
            ai=ai,
            slack=gateway,
            max_file_mb=settings.tutor_max_file_mb,
            math_images=settings.tutor_math_images,
        )
        return Crew(gateway, RunPreparer(sessions=sessions, ai=ai, slack=gateway, settings=settings), replier)

    poller = Poller(
        engine=engine,
        sessions=sessions,
        crews=Crews(workspaces, crew),
        ai=ai,
        settings=settings,
        wake=wake,
        metrics=metrics,
    )
    metrics.track_worker(poller)
    bolt = _bolt(slack, identity, workspaces, oauth)
    handlers.register(bolt, tutor, metrics)
    socket = None
    if settings.slack_app_token is not None:
        socket = SocketModeLink(bolt, settings.slack_app_token.get_secret_value(), metrics)
    components = Components(
        settings,
        engine,
        sessions,
        ai,
        slack,
        tutor,
        poller,
        bolt,
        identity,
        socket,
        metrics=metrics,
        workspaces=workspaces,
        oauth=oauth,
    )
    if socket is not None:
        socket.on_fatal = lambda reason: components.on_fatal(reason)
    return components


def _slack_side(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    pacer: Pacer,
    metrics: Metrics,
) -> tuple[SlackGateway, BotIdentity, Workspaces, AsyncOAuthFlow | None]:
    """Single-workspace mode: one gateway for all, and who the bot is (auth.test at start).
    Distribution mode: a gateway per installed workspace (`bot.workspaces`), each knowing its bot
    user from the installation, and Bolt's OAuth flow over slack_sdk's SQLAlchemy stores on our
    engine."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    gateway = SlackGateway(make_web_client(token, settings.slack_api_url, pacer=pacer), metrics=metrics.slack)
    identity = BotIdentity(gateway, token or "")
    if not settings.distribution:
        return gateway, identity, OneWorkspace(gateway), None
    assert settings.slack_client_id is not None and settings.slack_client_secret is not None
    secret = settings.slack_client_secret.get_secret_value()
    workspaces = InstalledWorkspaces(
        sessions=sessions,
        client_id=settings.slack_client_id,
        client_secret=secret,
        api_url=settings.slack_api_url,
        pacer=pacer,
        metrics=metrics.slack,
    )
    oauth = AsyncOAuthFlow(
        client=workspaces.app_client,  # oauth.v2.access and the install's auth.test: SLACK_API_URL
        settings=AsyncOAuthSettings(
            client_id=settings.slack_client_id,
            client_secret=secret,
            scopes=list(BOT_SCOPES),
            installation_store=AsyncSQLAlchemyInstallationStore(
                client_id=settings.slack_client_id, engine=engine
            ),
            installation_store_bot_only=True,
            state_store=AsyncSQLAlchemyOAuthStateStore(expiration_seconds=OAUTH_STATE_SECONDS, engine=engine),
            state_expiration_seconds=OAUTH_STATE_SECONDS,
        ),
    )
    return gateway, identity, workspaces, oauth


def _bolt(
    slack: SlackGateway, identity: BotIdentity, workspaces: Workspaces, oauth: AsyncOAuthFlow | None
) -> AsyncApp:
    authorize: Callable[..., Awaitable[AuthorizeResult]]
    if isinstance(workspaces, InstalledWorkspaces):
        # Bolt takes an AsyncAuthorize (which may answer None: not installed) alongside its OAuth flow.
        authorize = cast("Callable[..., Awaitable[AuthorizeResult]]", InstalledAuthorize(workspaces))
    else:

        async def authorize_one(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
            # A plain function: Bolt picks its arguments by name (a bound method's `self` confuses it).
            return identity.authorization(enterprise_id=enterprise_id, team_id=team_id)

        authorize = authorize_one
    client = slack.client
    return AsyncApp(
        # Bolt's client carries no token: each request's comes from `authorize` (a token here would
        # make Bolt run auth.test itself, lazily, on the first request and before any middleware).
        client=AsyncWebClient(
            base_url=client.base_url, timeout=client.timeout, retry_handlers=list(client.retry_handlers)
        ),
        authorize=authorize,
        # Distribution mode: Bolt's OAuth flow, served on its default paths by web_app.
        oauth_flow=oauth,
        # Signatures are checked by the HTTP endpoint (web_app), on the raw bytes, before anything
        # is decoded; Socket Mode carries none. So Bolt needs no signing secret.
        request_verification_enabled=False,
        # Requests no listener handles reach handlers.on_error: 200 and one line, not 404.
        raise_error_for_unhandled_request=True,
    )


class _NotAboutTheEnvToken(logging.Filter):
    """AsyncApp reads SLACK_BOT_TOKEN from the environment by itself and warns that the token of the
    client it was given wins; here the client has deliberately none (see `authorize`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != warning_client_prioritized_and_token_skipped()


logging.getLogger("slack_bolt.AsyncApp").addFilter(_NotAboutTheEnvToken())


class _NotInstalledSaidOnce(logging.Filter):
    """Distribution mode: a request from a workspace without an installation is logged once, by
    InstalledAuthorize (with the team); Bolt's second, team-less error line about it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Although the app should be installed into this workspace")


logging.getLogger("slack_bolt.AsyncMultiTeamsAuthorization").addFilter(_NotInstalledSaidOnce())


def web_app(components: Components, *, with_worker: bool, with_slack: bool = True) -> web.Application:
    """`POST /slack/events` (events, commands, interactivity), `GET /healthz` and `GET /metrics`.

    Without Slack (`slack-tutor worker`) only /healthz and /metrics: the worker's own health (its
    loop) and figures (OpenAI calls, polls) are known only inside its process.
    """
    app = web.Application()
    if with_slack and not components.settings.socket_mode:
        app.router.add_post(EVENTS_PATH, _slack_endpoint(components))
    oauth = components.oauth
    if with_slack and oauth is not None:
        # Bolt's OAuth flow on its default paths, as slack_bolt.adapter.aiohttp routes them.
        app.router.add_get(oauth.install_path, _oauth_endpoint(oauth.handle_installation))
        app.router.add_get(oauth.redirect_uri_path, _oauth_endpoint(oauth.handle_callback))

    database = _DatabaseProbe(components.engine)

    async def healthz(_request: web.Request) -> web.Response:
        status = await _health(components, database, with_worker=with_worker, with_slack=with_slack)
        return web.json_response(status, status=200 if status["ok"] else 503)

    app.router.add_get("/healthz", healthz)
    if components.settings.tutor_metrics:
        token = components.settings.tutor_metrics_token
        expected = f"Bearer {token.get_secret_value()}".encode() if token else None

        async def metrics(request: web.Request) -> web.Response:
            if expected is not None:
                sent = request.headers.get("Authorization", "").encode()
                if not hmac.compare_digest(sent, expected):
                    return web.Response(
                        status=401,
                        text="401: a bearer token is needed\n",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
            body = await components.metrics.exposition()
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

        app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_lifecycle(components, with_worker=with_worker, with_slack=with_slack))
    app.on_shutdown.append(lambda _app: database.close())
    return app


def _slack_endpoint(components: Components) -> Callable[[web.Request], Awaitable[web.Response]]:
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
        return await to_aiohttp_response(
            await handlers.dispatch(components.bolt, bolt_req, components.metrics)
        )

    return slack_events


def _oauth_endpoint(
    step: Callable[[AsyncBoltRequest], Awaitable[BoltResponse]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def oauth_step(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await step(await to_bolt_request(request)))

    return oauth_step


async def _health(
    components: Components, database: _DatabaseProbe, *, with_worker: bool, with_slack: bool
) -> dict[str, Any]:
    """Each part's state; `ok` is false when one is failing. Parts that are fine keep the fields
    /healthz always had; `identity` appears only when it fails."""
    stall = components.settings.tutor_stall_seconds
    status: dict[str, Any] = {"database": await database.state(), "worker": with_worker}
    failing = status["database"] != "ok"
    if with_worker and (components.poller.seconds_since_loop() or 0.0) > stall:
        status["worker"] = "stalled"
        failing = True
    if with_slack and _single_workspace(components) and components.identity.unresolved_for() > stall:
        status["identity"] = "unresolved"  # auth.test has not answered since startup
        failing = True
    if with_slack and components.socket is not None:
        connected = await components.socket.connected()
        status["slack"] = "connected" if connected else "connecting"
        failing = failing or not connected
    return {"ok": not failing, **status}


class _DatabaseProbe:
    """`SELECT 1` for /healthz, one at a time. A probe slower than HEALTH_DB_TIMEOUT is answered
    "unreachable" but left to finish: cancelling a query mid-flight costs SQLite its connection,
    and the reconnect can then wait for the lock that made it slow."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._probe: asyncio.Task[str] | None = None

    async def state(self) -> str:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._select_one(), name="health-probe")
        try:
            async with asyncio.timeout(HEALTH_DB_TIMEOUT):
                return await asyncio.shield(self._probe)
        except TimeoutError:
            log.warning("health check: database did not answer within %.0f s", HEALTH_DB_TIMEOUT)
            return "unreachable"

    async def _select_one(self) -> str:
        try:
            async with self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("health check: database unreachable (%s)", type(exc).__name__)
            return "unreachable"
        return "ok"

    async def close(self) -> None:
        if self._probe is not None:
            await _stop(self._probe, within=HEALTH_DB_TIMEOUT)


def _lifecycle(
    components: Components, *, with_worker: bool, with_slack: bool
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []
        identity = with_slack and _single_workspace(components)
        if identity:
            tasks.append(asyncio.create_task(components.identity.keep_fresh(), name="slack-identity"))
        if with_worker:
            tasks.append(asyncio.create_task(components.poller.run_forever(), name="run-poller"))
            retention = Retention(
                components.engine,
                days=components.settings.tutor_retention_days,
                usage_days=components.settings.tutor_usage_retention_days,
                wake=components.poller.wake,
            )
            first = components.settings.tutor_retention_first_within
            tasks.append(asyncio.create_task(retention.run_forever(first_within=first), name="retention"))
        if with_slack and components.socket is not None:
            tasks.append(asyncio.create_task(components.socket.run(), name="socket-mode"))
        if identity:
            # Usually answered in milliseconds; if Slack is down, serve anyway (questions are stored).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDENTITY_WAIT):
                    await components.identity.resolved.wait()
        yield
        for task in tasks:
            await _stop(task, within=components.settings.tutor_shutdown_grace + STOP_MARGIN)
        if components.socket is not None:
            await components.socket.close()
        await components.close()

    return lifecycle


def _single_workspace(components: Components) -> bool:
    """SLACK_BOT_TOKEN's one bot, resolved by auth.test (distribution mode: each installation's)."""
    return not components.settings.distribution


async def _stop(task: asyncio.Task[Any], *, within: float) -> None:
    """Cancel a background task and wait for it to end, but never longer than `within`."""
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=within)
    if not done:
        log.error("%s did not stop within %.0f s; stopping without it", task.get_name(), within)
    elif not task.cancelled() and task.exception() is not None:
        log.error("%s failed: %s", task.get_name(), task.exception())


async def serve(settings: Settings, *, with_web: bool, with_worker: bool) -> None:
    """Run until SIGTERM/SIGINT: HTTP (or Socket Mode) and/or the run-poller in one event loop.

    Raises ConfigError when the process can't go on (Slack refused the app token).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    components = build(settings)
    fatal: list[str] = []

    def give_up(reason: str) -> None:
        fatal.append(reason)
        stop.set()

    components.on_fatal = give_up
    app = web_app(components, with_worker=with_worker, with_slack=with_web)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # What the imports and the set-up made lives as long as the process: out of the collector's
    # sight, a full collection walks only what requests and runs make (a pause of its own otherwise).
    gc.freeze()
    try:
        await _listen(runner, settings, with_web=with_web)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
    if fatal:
        raise ConfigError(fatal[0])


async def _listen(runner: web.AppRunner, settings: Settings, *, with_web: bool) -> None:
    site = web.TCPSite(runner, host="0.0.0.0", port=settings.port)  # noqa: S104 - a server
    try:
        await site.start()
    except OSError as exc:
        if with_web:
            raise
        # A worker's /healthz and /metrics are for watching it: its runs go on without them.
        log.warning("not serving /healthz and /metrics: port %s is unavailable (%s)", settings.port, exc)
        return
    serving = "Socket Mode" if settings.socket_mode else EVENTS_PATH
    log.info("listening on :%s (%s)", settings.port, serving if with_web else "/healthz, /metrics")
