"""Builds the Bolt app, the aiohttp server and the run-poller, and owns their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot import handlers
from bot.ai import OpenAIGateway
from bot.config import Settings
from bot.poller import Poller
from bot.reply import Replier
from bot.slack_api import SlackGateway, make_web_client
from bot.tutor import Tutor
from db.session import make_engine, make_sessionmaker

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"


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

    async def close(self) -> None:
        await self.ai.close()
        await self.slack.close()
        await self.engine.dispose()


def build(settings: Settings) -> Components:
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    client = make_web_client(settings.slack_bot_token.get_secret_value(), settings.slack_api_url)
    slack = SlackGateway(client)
    ai = OpenAIGateway(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        timeout=settings.tutor_openai_timeout,
    )
    tutor = Tutor(sessions=sessions, ai=ai, slack=slack, settings=settings)
    replier = Replier(sessions=sessions, ai=ai, slack=slack, max_file_mb=settings.tutor_max_file_mb)
    poller = Poller(sessions=sessions, tutor=tutor, replier=replier, ai=ai, settings=settings)
    bolt = AsyncApp(
        client=client,
        signing_secret=(
            settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
        ),
        # Socket Mode carries no signatures; over HTTP Bolt checks every request.
        request_verification_enabled=not settings.socket_mode,
    )
    handlers.register(bolt, tutor)
    return Components(settings, engine, sessions, ai, slack, tutor, poller, bolt)


def web_app(components: Components, *, with_worker: bool) -> web.Application:
    """`POST /slack/events` (events, commands, interactivity) and `GET /healthz`."""
    app = web.Application()
    bolt = components.bolt

    async def slack_events(request: web.Request) -> web.Response:
        bolt_response = await bolt.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(bolt_response)

    async def healthz(_request: web.Request) -> web.Response:
        try:
            async with components.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("health check: database unreachable (%s)", type(exc).__name__)
            return web.json_response({"ok": False, "database": "unreachable"}, status=503)
        return web.json_response({"ok": True, "database": "ok", "worker": with_worker})

    if not components.settings.socket_mode:
        app.router.add_post(EVENTS_PATH, slack_events)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(_lifecycle(components, with_worker=with_worker))
    return app


def _lifecycle(
    components: Components, *, with_worker: bool
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []
        socket_handler = None
        if with_worker:
            components.tutor.wake = components.poller.wake
            tasks.append(asyncio.create_task(components.poller.run_forever(), name="run-poller"))
        if components.settings.slack_app_token is not None:
            socket_handler = AsyncSocketModeHandler(
                components.bolt, components.settings.slack_app_token.get_secret_value()
            )
            await socket_handler.connect_async()  # type: ignore[no-untyped-call]
            log.info("connected to Slack in Socket Mode")
        yield
        if socket_handler is not None:
            await socket_handler.close_async()  # type: ignore[no-untyped-call]
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await components.close()

    return lifecycle


async def serve(settings: Settings, *, with_web: bool, with_worker: bool) -> None:
    """Run until SIGTERM/SIGINT: HTTP (or Socket Mode) and/or the run-poller in one event loop."""
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
    runner = web.AppRunner(web_app(components, with_worker=with_worker), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host="0.0.0.0", port=settings.port)  # noqa: S104 - a server
    await site.start()
    log.info("listening on :%s (%s)", settings.port, "Socket Mode" if settings.socket_mode else EVENTS_PATH)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
