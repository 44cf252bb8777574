"""A TCP proxy that tests can cut and restore: a database outage without touching the database server.

``cut()`` closes every open connection (the client sees a reset) and then either refuses new
ones (nothing listens on the port) or, with ``blackhole=True``, accepts them and never answers,
as a partitioned network does. ``restore()`` forwards again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

CHUNK = 64 * 1024
#: Bound on waiting for a connection's pumps to notice it was aborted.
CLOSE_WITHIN = 2.0


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.blackholed = False
        #: Connections accepted so far (forwarded, refused while cut, or blackholed).
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._released = asyncio.Event()

    @property
    def is_cut(self) -> bool:
        return self._server is None or self.blackholed

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self, *, blackhole: bool = False) -> None:
        """Close all connections; then refuse new ones, or swallow them silently (``blackhole``)."""
        if blackhole:
            self.blackholed = True
            self._released.clear()
        else:
            await self._stop_listening()
        await self._abort_all()

    async def restore(self) -> None:
        """Forward new connections again (connections held by a blackhole are reset)."""
        if self.blackholed:
            self.blackholed = False
            self._released.set()
            await self._abort_all()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self._stop_listening()
        self._released.set()
        await self._abort_all()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await asyncio.wait_for(server.wait_closed(), CLOSE_WITHIN)

    async def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        handlers = list(self._handlers)
        if handlers:
            await asyncio.wait(handlers, timeout=CLOSE_WITHIN)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(client_writer)
        try:
            if self.blackholed:
                await self._released.wait()
                return
            await self._forward(client_reader, client_writer)
        finally:
            self._writers.discard(client_writer)
            self._handlers.discard(task)
            client_writer.transport.abort()

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            return
        self._writers.add(upstream_writer)
        try:
            pumps = [
                asyncio.create_task(_pump(client_reader, upstream_writer)),
                asyncio.create_task(_pump(upstream_reader, client_writer)),
            ]
            # Either side closing ends the connection, as it would end a real one.
            _done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pending:
                pump.cancel()
            await asyncio.wait(pumps, timeout=CLOSE_WITHIN)
        finally:
            self._writers.discard(upstream_writer)
            upstream_writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
