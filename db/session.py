"""Engine and session factory; SQLite gets the pragmas that make it a decent embedded queue.

`normalize_url` turns the URL forms operators are handed (`postgres://` from Heroku, Fly or Render,
`postgresql://`, `postgresql+psycopg://`, `sqlite:///`) into the async drivers' forms, and
`connection_problem` turns a failed connection into one sentence an operator can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from bot.errors import ConfigError

POSTGRES_DRIVER = "postgresql+asyncpg"
SQLITE_DRIVER = "sqlite+aiosqlite"
#: libpq's names (what Heroku & co. append, e.g. `?sslmode=require`) → asyncpg's.
LIBPQ_PARAMETERS = {"sslmode": "ssl", "connect_timeout": "timeout"}
#: Query parameters asyncpg takes from the URL as they are.
ASYNCPG_PARAMETERS = frozenset(
    {"ssl", "timeout", "command_timeout", "target_session_attrs", "prepared_statement_cache_size"}
)
SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
#: PostgreSQL's SQLSTATEs for refusals at connect time (asyncpg and SQLAlchemy both carry `sqlstate`).
INVALID_PASSWORD, INVALID_AUTHORIZATION, INVALID_CATALOG_NAME = "28P01", "28000", "3D000"
TOO_MANY_CONNECTIONS, CANNOT_CONNECT_NOW = "53300", "57P03"
#: Seconds: a database that does not answer fails a request within Slack's 3 s (503, so Slack retries).
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 30.0
#: Seconds a pooled PostgreSQL connection may sit unused before it is pinged at checkout.
PING_IDLE = 1.0
#: How long a failed SQLite connect waits for aiosqlite's thread to end.
THREAD_END_WAIT = 1.0


def normalize_url(url: str | URL) -> URL:
    """The async-driver URL for any PostgreSQL or SQLite form; other URLs are returned as they are.

    Raises ConfigError for a URL that isn't one, or one carrying parameters asyncpg can't take.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            "DATABASE_URL is not a database URL; use e.g. postgresql://user:password@host:5432/db "
            "or sqlite:///slack-tutor.db."
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        return parsed.set(drivername=POSTGRES_DRIVER, query=_asyncpg_query(parsed))
    if backend == "sqlite" and driver in ("", "pysqlite", "aiosqlite"):
        return parsed.set(drivername=SQLITE_DRIVER)
    return parsed


def _asyncpg_query(url: URL) -> dict[str, str]:
    query: dict[str, str] = {}
    for name, value in url.query.items():
        if not isinstance(value, str):
            raise ConfigError(f"DATABASE_URL gives {name} more than once; give it once.")
        query[LIBPQ_PARAMETERS.get(name, name)] = value
    unknown = sorted(set(query) - ASYNCPG_PARAMETERS)
    if unknown:
        raise ConfigError(
            f"DATABASE_URL has {', '.join(unknown)}, which the PostgreSQL driver (asyncpg) doesn't take; "
            f"remove {'it' if len(unknown) == 1 else 'them'} (it accepts sslmode, connect_timeout, "
            f"{', '.join(sorted(ASYNCPG_PARAMETERS))})."
        )
    if "ssl" in query and query["ssl"] not in SSL_MODES:
        raise ConfigError(
            f"DATABASE_URL has sslmode={query['ssl']}; use one of {', '.join(sorted(SSL_MODES))}."
        )
    return query


def make_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        # One connection per process: SQLite has one writer anyway, and queueing in the pool is
        # fair and cheap where several connections would sleep in SQLite's busy handler.
        kwargs.update(pool_size=1, max_overflow=0)
        engine = create_async_engine(parsed, async_creator=_sqlite_connector(parsed), **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    if parsed.get_backend_name() == "postgresql":
        parsed, timeouts = _timeouts(parsed)
        kwargs.setdefault("connect_args", timeouts)
        kwargs.setdefault("pool_timeout", 10)
    engine = create_async_engine(parsed, **kwargs)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Pessimistic disconnect handling, as `pool_pre_ping` does it, for connections that sat in
    the pool longer than PING_IDLE: a database restart or a cut connection is found by the ping
    (and the pool reconnects) rather than by the caller's statement. A connection used a moment
    ago is not pinged: `pool_pre_ping` pings every checkout, three round trips each on asyncpg
    (BEGIN, `;`, ROLLBACK), which at load were half of a worker's database traffic. A connection
    that breaks in use is found by its statement either way (SQLAlchemy then invalidates the pool)."""
    pool = engine.sync_engine.pool

    def checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < PING_IDLE:
            return  # a new connection, or one in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("the pooled connection is gone") from exc  # the pool reconnects

    event.listen(pool, "checkin", checkin)
    event.listen(pool, "checkout", checkout)


def _timeouts(url: URL) -> tuple[URL, dict[str, float]]:
    """Timeouts given in the URL win over ours; asyncpg wants them as numbers, the URL has text."""
    timeouts = {"timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT}
    for name in timeouts:
        if name in url.query:
            try:
                timeouts[name] = float(str(url.query[name]))
            except ValueError:
                problem = f"DATABASE_URL has {name}={url.query[name]}; give a number of seconds."
                raise ConfigError(problem) from None
    return url.difference_update_query(timeouts), timeouts


def make_read_only_engine(url: str | URL) -> AsyncEngine:
    """For looking without touching: an SQLite file is opened read-only (never created), no pragmas."""
    parsed = normalize_url(url)
    path = sqlite_path(parsed)
    if path is None:
        return make_engine(parsed)
    return create_async_engine(
        parsed, poolclass=NullPool, async_creator=_sqlite_connector(parsed, read_only_file=path)
    )


def sqlite_path(url: str | URL) -> Path | None:
    """The file of an SQLite URL (relative to the working directory); None for in-memory or others."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def _sqlite_connector(
    url: URL, *, read_only_file: Path | None = None
) -> Callable[[], Awaitable[aiosqlite.Connection]]:
    (database,), options = SQLiteDialect_aiosqlite().create_connect_args(url)
    if read_only_file is not None:
        # Without a -wal file no process has the database open: read it as immutable, which creates no
        # -wal/-shm files either; with one, read-only mode reads what the running bot wrote to it.
        running = read_only_file.with_name(read_only_file.name + "-wal").exists()
        mode = "mode=ro" if running else "mode=ro&immutable=1"
        database, options["uri"] = f"{read_only_file.resolve().as_uri()}?{mode}", True

    async def connect() -> aiosqlite.Connection:
        connection = aiosqlite.connect(database, timeout=30, factory=_RollingBackConnection, **options)
        thread = connection._thread  # aiosqlite has no public handle on its thread
        thread.daemon = True  # as SQLAlchemy's own aiosqlite connect does
        try:
            return await connection
        except BaseException:
            # A failed or cancelled connect makes aiosqlite stop its thread without waiting for its
            # last reply to this loop; a loop closed meanwhile (shutdown) kills the thread with
            # "Event loop is closed". Waiting for it takes a millisecond; it is awaited, never
            # joined, so a thread stuck in SQLite's busy handler can't freeze the event loop.
            await asyncio.to_thread(thread.join, THREAD_END_WAIT)
            raise

    return connect


class _RollingBackConnection(sqlite3.Connection):
    """Closing ends the connection's transaction first.

    A connection closed while a statement of its transaction is unfinished (SQLAlchemy throws away
    one whose statement was cancelled, and the cancelled cursor lives on in a traceback) only
    closes once that statement is freed: until the garbage collector runs, its transaction keeps
    the write lock, and every other connection of the process waits busy_timeout (30 s) for it.
    A rollback ends the transaction whatever statements are pending.
    """

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.in_transaction:
                self.rollback()
        super().close()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, emit BEGIN (see _sqlite_begin_immediate).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets the web process write the inbox while a worker reads; busy_timeout queues writers.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    # Take the write lock up front: a WAL reader that later writes fails at once with
    # "database is locked" if another process wrote in between; BEGIN IMMEDIATE waits instead.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps: SQLAlchemy's `.orig`, `raise … from`, and the exception being handled."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)


def network_reason(exc: BaseException) -> str | None:
    """What went wrong on the way to a server (DNS, refused, timeout, other network), or None."""
    found = list(causes(exc))
    for cause in found:
        if isinstance(cause, socket.gaierror) or "DNS" in type(cause).__name__:
            return "the host name does not resolve (DNS lookup failed)"
    for cause in found:
        if isinstance(cause, ConnectionRefusedError):
            return "the connection was refused (nothing listens on that port)"
    for cause in found:
        if isinstance(cause, TimeoutError) or "Timeout" in type(cause).__name__:
            return "no answer in time (a firewall, a wrong host or port, or an overloaded server)"
    for cause in found:
        if isinstance(cause, OSError):
            return f"a network error ({cause.strerror or type(cause).__name__})"
    return None


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database can't be reached right now (a connection refused, cut or
    timed out, the pool's connections all taken), not that a statement is wrong: the work is
    retried as it is, later, rather than counted as a failed attempt. asyncpg's connect timeouts
    and refusals reach us unwrapped, as TimeoutError and ConnectionError."""
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.InterfaceError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, sa_exc.OperationalError):
            # PostgreSQL: connection exceptions (08…), shutting down / starting up (57P…), too many
            # connections; SQLite: another writer holds the lock. Not "no such table" and the like.
            state = str(getattr(exc.orig, "sqlstate", "") or "")
            text = str(exc.orig).lower()
            return (
                state.startswith(("08", "57P"))
                or state == TOO_MANY_CONNECTIONS
                or ("database is locked" in text or "database is busy" in text)
            )
        return False
    return isinstance(exc, TimeoutError | ConnectionError)


def connection_problem(url: str | URL, exc: BaseException) -> str | None:
    """One sentence naming where the database is (never the password) and what to check, or None
    when `exc` is no failure to connect (a bug, a failing migration) and should surface as it is."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        reason = _sqlite_reason(exc)
        if reason is None:
            return None
        return (
            f"Cannot open the SQLite database {parsed.database}: {reason}. "
            "Check DATABASE_URL, and that its directory exists and is writable."
        )
    reason, check = _postgres_reason(parsed, exc)
    if reason is None:
        return None
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    return f'Cannot connect to PostgreSQL at {where} (database "{parsed.database}"): {reason}. {check}'


def _sqlite_reason(exc: BaseException) -> str | None:
    for cause in causes(exc):
        if isinstance(cause, sqlite3.OperationalError) and "unable to open" in str(cause):
            return str(cause)
        if isinstance(cause, sqlite3.DatabaseError) and "not a database" in str(cause):
            return "the file is not an SQLite database"
    return None


def _postgres_reason(url: URL, exc: BaseException) -> tuple[str | None, str]:
    check_url = "Check DATABASE_URL."
    for cause in causes(exc):
        state = getattr(cause, "sqlstate", None)
        if state == INVALID_PASSWORD:
            return f'the password for user "{url.username}" is wrong', "Check the password in DATABASE_URL."
        if state in (INVALID_CATALOG_NAME, INVALID_AUTHORIZATION):
            return str(cause), check_url
        if state in (TOO_MANY_CONNECTIONS, CANNOT_CONNECT_NOW):
            return str(cause), "Try again in a minute, or check the server's connection limit."
        if isinstance(cause, ConnectionError) and "SSL" in str(cause):
            return "the server does not accept SSL", "Drop sslmode=require from DATABASE_URL, or enable SSL."
    reason = network_reason(exc)
    if reason is not None:
        return reason, "Check the host and port in DATABASE_URL, and that PostgreSQL is up and reachable."
    return None, ""
