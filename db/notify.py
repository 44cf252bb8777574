"""Instant hand-off on PostgreSQL: workers LISTEN, the database NOTIFYs.

Triggers (migration 0006) send `NOTIFY slack_tutor_work` whenever a run becomes claimable (a
question, a reset or a button press is stored; a lease is released; a run finishes and the next
question of its thread is due) or a clean-up is queued. The notification is delivered when the
storing transaction commits, by whichever process committed it, so a web process wakes every
worker without knowing them.

A worker holds one connection of its own for LISTEN (outside the pool: LISTEN needs a session,
which a transaction-pooling PgBouncer does not keep; point `DATABASE_LISTEN_URL` at the database
itself then). If that connection drops, the worker reconnects with backoff and, meanwhile, polls
as it always does: notifications make hand-off fast, never correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from db.session import normalize_url

log = logging.getLogger(__name__)

#: The channel the triggers notify (migration 0006).
CHANNEL = "slack_tutor_work"
#: Seconds between liveness checks of the LISTEN connection: a connection cut without a FIN
#: (a dead host, a black-holed proxy) is noticed within this plus the check's timeout.
CHECK_EVERY = 5.0
CHECK_TIMEOUT = 3.0
FIRST_RETRY = 0.5
MAX_RETRY = 30.0
#: URL parameters asyncpg wants as numbers.
NUMBERS = frozenset({"timeout", "command_timeout", "prepared_statement_cache_size"})


def connect_arguments(url: str | URL) -> dict[str, Any]:
    """asyncpg.connect() arguments for a database URL: the pool's own (normalised) URL, its
    ssl and timeout parameters included."""
    parsed = normalize_url(url)
    arguments: dict[str, Any] = parsed.translate_connect_args(username="user")
    for name, value in parsed.query.items():
        text = value if isinstance(value, str) else value[-1]
        arguments[name] = float(text) if name in NUMBERS else text
    arguments.setdefault("timeout", CHECK_TIMEOUT)
    return arguments


class WorkListener:
    """Calls `on_work()` for every notification on CHANNEL; reconnects by itself until stopped."""

    def __init__(self, url: str | URL, on_work: Callable[[], None]) -> None:
        self._arguments = connect_arguments(url)
        self._on_work = on_work
        #: Set while LISTEN is in effect (tests and /healthz can tell).
        self.listening = asyncio.Event()
        self.notifications = 0

    async def run_forever(self) -> None:
        delay = FIRST_RETRY
        while True:
            try:
                await self._listen_until_lost()
                delay = FIRST_RETRY
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                level = logging.WARNING if self.notifications or delay > FIRST_RETRY else logging.INFO
                log.log(level, "LISTEN connection unavailable (%s); polling until it is back", _brief(exc))
            self.listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY)

    async def _listen_until_lost(self) -> None:
        connection: asyncpg.Connection = await asyncpg.connect(**self._arguments)
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(CHANNEL, self._notified)
            self.listening.set()
            log.info("listening for new work (LISTEN %s)", CHANNEL)
            # Work stored while we were not listening would wait for the poll: look now.
            self._on_work()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CHECK_EVERY):  # not wait_for: it can lose a cancellation
                        await lost.wait()
                if not lost.is_set():
                    async with asyncio.timeout(CHECK_TIMEOUT):
                        await connection.fetchval("SELECT 1")
        finally:
            self.listening.clear()
            connection.terminate()

    def _notified(self, _connection: object, _pid: int, _channel: str, _payload: str) -> None:
        self.notifications += 1
        self._on_work()


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
