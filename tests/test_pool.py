"""The PostgreSQL pool pings a connection only when it sat unused (`db.session.PING_IDLE`): one
cut while idle is replaced at checkout, unseen by the caller; one used a moment ago is not
pinged (a round trip saved per checkout at load), so a cut in that moment reaches the caller.

The cut is a TCP proxy in front of the machine's PostgreSQL; the server is never touched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from db import session as db_session
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres


@pytest_asyncio.fixture
async def proxied_engine(postgres_url: str) -> AsyncIterator[tuple[TcpProxy, AsyncEngine]]:
    url = make_url(postgres_url)
    async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port)
        engine = db_session.make_engine(through.render_as_string(hide_password=False), pool_size=1)
        try:
            yield proxy, engine
        finally:
            await engine.dispose()


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _cut_while_pooled(proxy: TcpProxy) -> None:
    await proxy.cut()  # the pooled connection is reset
    await proxy.restore()


async def test_a_connection_cut_while_idle_is_replaced_at_checkout(
    proxied_engine: tuple[TcpProxy, AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, engine = proxied_engine
    monkeypatch.setattr(db_session, "PING_IDLE", 0.0)  # every pooled connection counts as idle
    before = await _backend_pid(engine)
    await _cut_while_pooled(proxy)

    after = await _backend_pid(engine)  # no error: the ping found the cut and the pool reconnected

    assert after != before
    assert proxy.accepted == 2


async def test_a_connection_used_a_moment_ago_is_not_pinged(
    proxied_engine: tuple[TcpProxy, AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, engine = proxied_engine
    monkeypatch.setattr(db_session, "PING_IDLE", 3600.0)
    await _backend_pid(engine)
    await _cut_while_pooled(proxy)

    with pytest.raises(DBAPIError) as failed:
        await _backend_pid(engine)  # not pinged: the statement itself meets the cut
    assert failed.value.connection_invalidated

    await _backend_pid(engine)  # the pool was invalidated: the next checkout connects afresh
    assert proxy.accepted == 2


async def test_a_busy_pool_and_a_refused_connect_count_as_unavailable_a_bad_statement_does_not(
    postgres_url: str,
) -> None:
    """What the run-poller retries as it is (`db.session.unavailable`) rather than spending an
    attempt on: real failures, from a real pool and server."""
    engine = db_session.make_engine(postgres_url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    refused = db_session.make_engine(make_url(postgres_url).set(port=1).render_as_string(hide_password=False))
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            with pytest.raises(Exception) as busy:
                async with engine.connect():
                    pass
        assert db_session.unavailable(busy.value), busy.value

        with pytest.raises(Exception) as down:
            async with refused.connect():
                pass
        assert db_session.unavailable(down.value), down.value

        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as wrong:
                await connection.execute(text("SELECT no_such_column FROM pg_class"))
        assert not db_session.unavailable(wrong.value)
    finally:
        await engine.dispose()
        await refused.dispose()
