"""Shared machinery for the fake HTTP servers: request recording, fault injection, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json as jsonlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Self
from urllib.parse import parse_qsl

from aiohttp import web

#: Uploads can be large (Slack allows 1 GB, our limit is 50 MB); let tests push up to 300 MB.
CLIENT_MAX_SIZE = 300 * 1024 * 1024


@dataclass
class FilePart:
    """A multipart part that carried a filename (an uploaded file)."""

    name: str
    filename: str
    content_type: str
    content: bytes


def _peer(request: web.BaseRequest) -> tuple[str, int] | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return (str(peer[0]), int(peer[1])) if peer else None


@dataclass
class RecordedRequest:
    """One HTTP request as the fake received it.

    ``headers`` keys are lower-cased (``rec.headers["authorization"]``).
    ``query`` keeps the last value of a repeated key; ``query_multi`` keeps them all
    (e.g. OpenAI's ``include[]``).
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    form: dict[str, str]
    json: Any
    #: Selector name: Slack Web API method ("chat.postMessage") or path; OpenAI "METHOD /path".
    name: str = ""
    query_multi: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, FilePart] = field(default_factory=dict)
    #: HTTP status the fake answered with (None while the request is still being handled).
    status: int | None = None
    #: Form/query keys whose values are JSON text (Slack sends blocks/metadata/files so);
    #: ``args`` decodes them.
    json_string_keys: frozenset[str] = frozenset()
    received_at: float = field(default_factory=time.time)
    #: The client's end of the connection the request came on (host, port).
    peer: tuple[str, int] | None = None
    #: Its answer will be replaced by a ``fail_next(after_handling=True)`` fault: a handler that
    #: would stream answers at once instead (the client sees only the fault).
    faulted: bool = False

    @property
    def args(self) -> dict[str, Any]:
        """Query + form + JSON object body merged (later wins), nested JSON strings decoded."""
        merged: dict[str, Any] = {}
        merged.update(self.query)
        merged.update(self.form)
        if isinstance(self.json, dict):
            merged.update(self.json)
        for key in self.json_string_keys:
            value = merged.get(key)
            if isinstance(value, str):
                merged[key] = decode_json_string(value)
        return merged

    @property
    def bearer(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None


_RECORD_KEY = web.RequestKey("fake_recorded_request", RecordedRequest)


def decode_json_string(value: str) -> Any:
    """Parse ``value`` as JSON if it looks like an object or array; else return it unchanged."""
    stripped = value.strip()
    if stripped[:1] in ("{", "["):
        try:
            return jsonlib.loads(stripped)
        except ValueError:
            return value
    return value


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, FilePart]]:
    """Split a multipart/form-data body into text fields and file parts."""
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return {}, {}
    delimiter = b"--" + boundary.encode("latin-1")
    form: dict[str, str] = {}
    files: dict[str, FilePart] = {}
    chunks = body.split(delimiter)
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        data = data.removesuffix(b"\r\n")
        part = Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, colon, value = line.partition(":")
            if colon:
                part[key.strip()] = value.strip()
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        name_str = name if isinstance(name, str) else ""
        if filename is not None:
            files[name_str] = FilePart(
                name=name_str,
                filename=filename,
                content_type=part.get_content_type() if part["content-type"] else "",
                content=data,
            )
        else:
            form[name_str] = data.decode("utf-8", "replace")
    return form, files


def _parse_body(content_type: str, body: bytes) -> tuple[dict[str, str], Any, dict[str, FilePart]]:
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/json" or mime.endswith("+json"):
        try:
            return {}, jsonlib.loads(body) if body else None, {}
        except ValueError:
            return {}, None, {}
    if mime == "application/x-www-form-urlencoded":
        text = body.decode("utf-8", "replace")
        return dict(parse_qsl(text, keep_blank_values=True)), None, {}
    if mime == "multipart/form-data":
        form, files = parse_multipart(body, content_type)
        return form, None, files
    return {}, None, {}


@dataclass
class _Fault:
    selector: str
    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None
    remaining: int
    after_handling: bool

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


@dataclass
class _Delay:
    selector: str
    seconds: float
    remaining: int
    after_handling: bool = False


class FakeServer:
    """Base class: an aiohttp app on 127.0.0.1:<random port> that records every request."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._delays: list[_Delay] = []
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def _build_app(self, app: web.Application) -> None:
        raise NotImplementedError

    def _request_name(self, method: str, path: str) -> str:
        return f"{method} {path}"

    def _matches(self, selector: str, rec: RecordedRequest) -> bool:
        return rec.name == selector

    def _json_string_keys(self, rec: RecordedRequest) -> frozenset[str]:
        return frozenset()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=[self._middleware])
        self._build_app(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        addresses = runner.addresses
        self._port = int(addresses[0][1])

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def calls(self, name: str) -> list[RecordedRequest]:
        """Recorded requests matching ``name`` (selector syntax depends on the fake)."""
        return [rec for rec in self.requests if self._matches(name, rec)]

    def clear(self) -> None:
        """Forget the recorded requests (not the fake's state)."""
        self.requests.clear()

    def fail_next(
        self,
        name: str,
        *,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        times: int = 1,
        after_handling: bool = False,
    ) -> None:
        """Answer the next ``times`` requests matching ``name`` with ``status``/``body``/``headers``.

        With ``after_handling=True`` the request is processed normally first (its side effects
        happen, e.g. a response is created) and only the answer is replaced: this simulates
        "the server did it but the client saw an error".
        """
        self._faults.append(
            _Fault(
                selector=name,
                status=status,
                body=body,
                headers=headers,
                remaining=times,
                after_handling=after_handling,
            )
        )

    def clear_faults(self) -> None:
        """The outage is over: forget every pending ``fail_next`` and ``delay_next``."""
        self._faults.clear()
        self._delays.clear()

    def delay_next(self, name: str, seconds: float, *, times: int = 1, after_handling: bool = False) -> None:
        """Sleep ``seconds`` before handling the next ``times`` matching requests (timeouts).

        With ``after_handling=True`` the request is handled first (its side effects happen, as on
        a real server that got it) and only its answer is late."""
        delay = _Delay(selector=name, seconds=seconds, remaining=times, after_handling=after_handling)
        self._delays.append(delay)

    def release_delays(self) -> None:
        """End the sleep of every request delayed now: they are handled at once."""
        self._release.set()
        self._release = asyncio.Event()

    def _take_fault(self, rec: RecordedRequest) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and self._matches(fault.selector, rec):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _take_delay(self, rec: RecordedRequest) -> _Delay | None:
        for delay in self._delays:
            if delay.remaining > 0 and self._matches(delay.selector, rec):
                delay.remaining -= 1
                if delay.remaining == 0:
                    self._delays.remove(delay)
                return delay
        return None

    async def _sleep(self, delay: _Delay | None) -> None:
        if delay is not None and delay.seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay.seconds):
                    await self._release.wait()

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        body = await request.read()
        content_type = request.headers.get("Content-Type", "")
        form, parsed_json, files = _parse_body(content_type, body)
        query_multi: dict[str, list[str]] = {}
        for key, value in request.query.items():
            query_multi.setdefault(key, []).append(value)
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query={key: values[-1] for key, values in query_multi.items()},
            headers={key.lower(): value for key, value in request.headers.items()},
            body=body,
            form=form,
            json=parsed_json,
            name=self._request_name(request.method, request.path),
            query_multi=query_multi,
            files=files,
            peer=_peer(request),
        )
        rec.json_string_keys = self._json_string_keys(rec)
        self.requests.append(rec)
        request[_RECORD_KEY] = rec

        delay = self._take_delay(rec)
        if delay is not None and not delay.after_handling:
            await self._sleep(delay)
        fault = self._take_fault(rec)
        rec.faulted = fault is not None
        if fault is not None and not fault.after_handling:
            rec.status = fault.status
            return fault.response()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            rec.status = exc.status
            if fault is not None:
                rec.status = fault.status
                return fault.response()
            raise
        if delay is not None and delay.after_handling:
            await self._sleep(delay)
        if fault is not None:
            rec.status = fault.status
            return fault.response()
        rec.status = response.status
        return response


def recorded(request: web.Request) -> RecordedRequest:
    """The RecordedRequest the middleware attached to ``request`` (body already parsed)."""
    return request[_RECORD_KEY]


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, not an I/O timeout
    interval: float = 0.02,
    *,
    message: str | None = None,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that value.

    Raises AssertionError after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if loop.time() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"wait_for timed out after {timeout:.2f}s: {what} (last value: {last!r})")
        await asyncio.sleep(interval)
