"""A fake OpenAI API (Responses in background mode, Conversations, Containers, Files, Vector stores).

Point the real SDK at it: ``AsyncOpenAI(api_key=fake.api_key, base_url=fake.base_url)``.

Selectors for ``calls()``, ``fail_next()`` and ``delay_next()``:

- ``"POST /v1/responses"``: that HTTP method and a path **prefix** (so it also matches
  ``POST /v1/responses/resp_…/cancel``); end the path with ``$`` for an exact match
  (``"POST /v1/responses$"``);
- ``"/v1/containers"``: any method, path prefix;
- ``"GET"``: every request with that method.

Response lifecycle: ``POST /v1/responses`` answers ``queued``; the first retrieve answers
``in_progress``; any later retrieve finishes the response (status from its ``Turn``) once
``fake.latency`` seconds have passed since the create. ``fake.complete(resp_id)`` finishes
it at once without a retrieve. With a ``latency`` set, a response also finishes by itself once
that time has passed, polled or not, as a real background response does (a client that lost
the create's answer can then find it in the conversation).

Vector stores: a file added (``/files`` or ``/file_batches``) is ``in_progress`` until it has been
looked at (retrieved or listed) ``fake.index_polls`` times, then ``completed``, or ``failed`` with
``unsupported_file`` when its name is in ``fake.unindexable``. ``fake.answer_from_documents()``
scripts a model that answers from the text of the ``input_file`` documents it is shown and the
indexed files of its ``file_search`` stores (a PDF's text is read from its content streams), and
cites a searched file with a ``file_citation`` annotation.

Streaming (``stream: true`` on the create): the answer is Server-Sent Events, each with a
``sequence_number``, as the real API sends them: ``response.created`` and ``response.in_progress``
at once, then, ``fake.latency`` seconds after the create, the work (a ``code_interpreter_call``
with its code and logs) and the text as word deltas spread over the last ``fake.stream_span``
seconds, then ``response.completed`` (or ``.failed`` / ``.incomplete``) with the full response.
``GET /v1/responses/{id}?stream=true&starting_after=N`` replays the events after N and goes on
live. ``fake.cut_streams(after=K)`` closes the next stream's connection after K events (a dropped
connection); ``complete(id)`` finishes a streamed response at once too.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json as jsonlib
import re
import struct
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ._recording import FakeServer, RecordedRequest, recorded
from .documents import document_text

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete"})
INCLUDE_CI_OUTPUTS = "code_interpreter_call.outputs"

RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def png_bytes(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG of the given size (built with zlib, no PIL)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type "None"
        for x in range(width):
            rows += bytes(((x * 255) // max(width - 1, 1), (y * 255) // max(height - 1, 1), 128))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows)))
        + chunk(b"IEND", b"")
    )


def _hex(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _now() -> int:
    return int(time.time())


@dataclass
class Chart:
    """A file the model's code "writes" into the container (``/mnt/data/<filename>``)."""

    filename: str
    content: bytes = field(default_factory=png_bytes)
    #: Add a sandbox link to the text and a container_file_citation annotation.
    cite: bool = True
    #: Filename in the annotation (e.g. a generic "cfile_abc.png"); default ``filename``.
    cite_name: str | None = None


@dataclass
class Turn:
    """What the fake model does for one response."""

    text: str = "To solve 3x + 11 = 14, subtract 11 from both sides: **3x = 3**, so *x = 1*."
    charts: list[Chart] = field(default_factory=list)
    code: str | None = "print((14-11)/3)"
    logs: str = "1.0\n"
    status: str = "completed"  # or "failed" / "incomplete"
    error: dict[str, Any] | None = None  # e.g. {"code": "server_error", "message": "..."}
    incomplete_reason: str | None = None
    #: Files the code writes but the text does not cite (source "assistant").
    extra_files: list[tuple[str, bytes]] = field(default_factory=list)
    #: Documents the answer cites: ``(file_id, filename)`` → ``file_citation`` annotations.
    citations: list[tuple[str, str]] = field(default_factory=list)
    #: Also leave an Assistants-era marker (``【4:0†name】``) in the text for each citation.
    legacy_markers: bool = False
    #: Text the model writes after citing its charts (the citations are then mid-answer).
    text_after_charts: str = ""


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    content_type: str
    created_at: int
    expires_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "expires_at": self.expires_at,
            "status": "processed",
            "status_details": None,
        }


@dataclass
class ContainerFile:
    id: str
    container_id: str
    path: str
    source: str
    content: bytes
    created_at: int

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "container.file",
            "container_id": self.container_id,
            "path": self.path,
            "source": self.source,
            "bytes": len(self.content),
            "created_at": self.created_at,
        }


@dataclass
class ContainerState:
    id: str
    name: str
    status: str
    created_at: int
    last_active_at: int
    expires_after: dict[str, Any]
    memory_limit: str
    files: dict[str, ContainerFile] = field(default_factory=dict)

    def touch(self) -> None:
        self.last_active_at = _now()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "container",
            "name": self.name,
            "status": self.status,
            "created_at": self.created_at,
            "last_active_at": self.last_active_at,
            "expires_after": copy.deepcopy(self.expires_after),
            "memory_limit": self.memory_limit,
            "network_policy": {"type": "disabled"},
        }

    def files_by_source(self, source: str) -> list[ContainerFile]:
        return [f for f in self.files.values() if f.source == source]


@dataclass
class VectorStoreFileState:
    """A file in a vector store: ``in_progress`` until retrieved ``index_polls`` times."""

    file_id: str
    vector_store_id: str
    created_at: int
    status: str = "in_progress"
    last_error: dict[str, Any] | None = None
    polls: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.file_id,
            "object": "vector_store.file",
            "created_at": self.created_at,
            "vector_store_id": self.vector_store_id,
            "status": self.status,
            "usage_bytes": 0,
            "last_error": copy.deepcopy(self.last_error),
            "attributes": {},
            "chunking_strategy": {
                "type": "static",
                "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400},
            },
        }


@dataclass
class VectorStoreState:
    id: str
    name: str
    created_at: int
    metadata: dict[str, Any]
    files: dict[str, VectorStoreFileState] = field(default_factory=dict)

    def counts(self, file_ids: list[str] | None = None) -> dict[str, int]:
        files = [f for f in self.files.values() if file_ids is None or f.file_id in file_ids]
        counts = {
            s: sum(f.status == s for f in files) for s in ("in_progress", "completed", "failed", "cancelled")
        }
        return {**counts, "total": len(files)}

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "vector_store",
            "name": self.name,
            "created_at": self.created_at,
            "last_active_at": self.created_at,
            "metadata": copy.deepcopy(self.metadata),
            "status": "completed",
            "usage_bytes": 0,
            "file_counts": self.counts(),
            "expires_after": None,
            "expires_at": None,
        }


@dataclass
class ConversationState:
    id: str
    created_at: int
    metadata: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "conversation",
            "created_at": self.created_at,
            "metadata": copy.deepcopy(self.metadata),
        }


@dataclass
class ResponseState:
    id: str
    request: dict[str, Any]
    turn: Turn
    conversation_id: str
    container_id: str | None
    uses_code_interpreter: bool
    created_monotonic: float
    body: dict[str, Any]
    retrieves: int = 0
    deleted: bool = False
    #: Created with stream=true: its events can be streamed (again).
    streamed: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Set (and replaced) whenever an event is added, so live streams wake up.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: The terminal event was sent: streams end after it.
    ended: bool = False
    #: Set by complete(): the remaining events come at once.
    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    #: A streamed response's final body while its events are still being sent.
    final: dict[str, Any] | None = None
    #: Wall-clock times (time.time()) of the first text delta and of the end, for benchmarks.
    first_delta_at: float | None = None
    completed_at: float | None = None

    @property
    def status(self) -> str:
        return str(self.body["status"])

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        status=status,
    )


def _not_found(kind: str, ident: str) -> web.Response:
    return _error(404, f"{kind} with id '{ident}' not found.", code=None)


def _paginate(items: list[dict[str, Any]], query: dict[str, str], *, default_order: str) -> dict[str, Any]:
    order = query.get("order", default_order)
    ordered = list(reversed(items)) if order == "desc" else list(items)
    after = query.get("after")
    if after:
        ids = [item.get("id") for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = max(1, min(100, int(query.get("limit", "20"))))
    except ValueError:
        limit = 20
    page = ordered[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(ordered) > limit,
    }


def _normalize_item(item: Any) -> dict[str, Any]:
    """An input item as the conversation stores it (message content always a list)."""
    if not isinstance(item, dict):
        item = {"type": "message", "role": "user", "content": str(item)}
    out: dict[str, Any] = copy.deepcopy(item)
    item_type = out.get("type") or "message"
    out["type"] = item_type
    if item_type == "message":
        content = out.get("content")
        role = out.get("role", "user")
        if isinstance(content, str):
            part_type = "output_text" if role == "assistant" else "input_text"
            out["content"] = [{"type": part_type, "text": content}]
        out.setdefault("id", _hex("msg_"))
        out.setdefault("status", "completed")
    else:
        out.setdefault("id", _hex("item_"))
    return out


def _strip_ci_outputs(items: list[dict[str, Any]], include: set[str]) -> list[dict[str, Any]]:
    rendered = copy.deepcopy(items)
    if INCLUDE_CI_OUTPUTS not in include:
        for item in rendered:
            if item.get("type") == "code_interpreter_call":
                item["outputs"] = None
    return rendered


def _include_of(rec: RecordedRequest) -> set[str]:
    values = set(rec.query_multi.get("include[]", [])) | set(rec.query_multi.get("include", []))
    if isinstance(rec.json, dict) and isinstance(rec.json.get("include"), list):
        values |= {str(v) for v in rec.json["include"]}
    return values


def _queued_body(response_id: str, conversation_id: str, body: dict[str, Any]) -> dict[str, Any]:
    reasoning = body.get("reasoning")
    return {
        "id": response_id,
        "object": "response",
        "created_at": _now(),
        "status": "queued",
        "background": True,
        "store": True,
        "completed_at": None,
        "conversation": {"id": conversation_id},
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "metadata": copy.deepcopy(body.get("metadata") or {}),
        "model": body["model"],
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {
            "effort": reasoning.get("effort") if isinstance(reasoning, dict) else None,
            "summary": None,
        },
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "auto",
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": copy.deepcopy(body.get("tool_choice", "auto")),
        "tools": copy.deepcopy(body.get("tools") or []),
        "top_p": 1.0,
        "truncation": body.get("truncation", "disabled"),
        "usage": None,
        "user": None,
    }


class FakeOpenAI(FakeServer):
    """Fake OpenAI API. See the module docstring for selectors and the response lifecycle."""

    def __init__(self, api_key: str = "sk-test-key") -> None:
        super().__init__()
        self.api_key = api_key
        #: Seconds after the create before a retrieve may finish a response.
        self.latency = 0.0
        #: ``(request_json) -> Turn``; used when the queue is empty.
        self.script: Callable[[dict[str, Any]], Turn] | None = None
        #: If set, ``GET /v1/models/{id}`` 404s for other ids.
        self.known_models: set[str] | None = None
        self.responses: dict[str, ResponseState] = {}
        self.conversations: dict[str, ConversationState] = {}
        self.containers: dict[str, ContainerState] = {}
        self.files: dict[str, StoredFile] = {}
        self.vector_stores: dict[str, VectorStoreState] = {}
        #: Retrieves of a vector store file (or its batch) before its indexing ends.
        self.index_polls = 1
        #: Filenames whose indexing fails (``unsupported_file``).
        self.unindexable: set[str] = set()
        self._batches: dict[str, tuple[str, list[str]]] = {}
        #: Seconds (at the end of ``latency``) over which a streamed answer's text deltas spread.
        self.stream_span = 1.0
        self._queue: list[Turn] = []
        self._cuts: list[int] = []
        self._players: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (OPENAI_BASE_URL)."""
        return f"{self.origin}/v1"

    def _request_name(self, method: str, path: str) -> str:
        return f"{method} {path}"

    def _matches(self, selector: str, rec: RecordedRequest) -> bool:
        method, _, path = selector.partition(" ") if " " in selector else ("", "", selector)
        if not selector.startswith("/") and " " not in selector:
            return rec.method == selector.upper()
        if method and rec.method != method.upper():
            return False
        if path.endswith("$"):
            return rec.path == path[:-1]
        return rec.path.startswith(path)

    def queue(self, *turns: Turn) -> None:
        """Script the next responses, first in first out (then ``script``, then ``Turn()``)."""
        self._queue.extend(turns)

    def _next_turn(self, request_json: dict[str, Any]) -> Turn:
        if self._queue:
            return self._queue.pop(0)
        if self.script is not None:
            return self.script(request_json)
        return Turn()

    async def close(self) -> None:
        for player in list(self._players):
            player.cancel()
        await asyncio.gather(*self._players, return_exceptions=True)
        await super().close()

    def cut_streams(self, *, after: int, times: int = 1) -> None:
        """Close the next ``times`` event streams after ``after`` events, mid-answer."""
        self._cuts.extend([after] * times)

    def creates(self) -> list[RecordedRequest]:
        """Every ``POST /v1/responses`` (creates only, not cancels)."""
        return self.calls("POST /v1/responses$")

    def resumes(self) -> list[RecordedRequest]:
        """Every ``GET /v1/responses/{id}?stream=true`` (a stream picked up again)."""
        return [r for r in self.calls("GET /v1/responses/") if r.query.get("stream") == "true"]

    def polls(self) -> list[RecordedRequest]:
        """Every plain retrieve (no stream)."""
        return [r for r in self.calls("GET /v1/responses/") if r.query.get("stream") != "true"]

    def expire_container(self, container_id: str) -> None:
        """Mark a container expired: retrieve shows status "expired", using it fails."""
        container = self.containers[container_id]
        container.status = "expired"
        container.files.clear()

    def complete(self, response_id: str) -> dict[str, Any]:
        """Finish a response now (as if the model was done); returns its wire object."""
        state = self.responses[response_id]
        if state.final is not None and not state.terminal:
            state.body = state.final
            self._append_turn(state, state.body["output"])
        elif not state.terminal:
            self._finish(state)
        state.hurry.set()
        return copy.deepcopy(state.body)

    def active_response(self, conversation_id: str) -> ResponseState | None:
        """The non-terminal response holding ``conversation_id`` (the lock), if any."""
        for state in self.responses.values():
            if state.conversation_id == conversation_id and not state.terminal:
                return state
        return None

    def add_file(
        self,
        filename: str,
        content: bytes,
        *,
        purpose: str = "user_data",
        content_type: str = "application/octet-stream",
    ) -> StoredFile:
        """Create a Files API file directly (no HTTP)."""
        stored = StoredFile(
            id=f"file-{uuid.uuid4().hex[:22]}",
            filename=filename,
            purpose=purpose,
            content=content,
            content_type=content_type,
            created_at=_now(),
        )
        self.files[stored.id] = stored
        return stored

    def add_container(self, name: str = "fake", *, file_ids: list[str] | None = None) -> str:
        """Create a container directly (no HTTP); returns its id."""
        return self._new_container(name, None, "1g", file_ids or []).id

    def _build_app(self, app: web.Application) -> None:
        app.on_response_prepare.append(self._add_request_id)
        routes: list[tuple[str, str, RouteHandler]] = [
            ("POST", "/v1/conversations", self._conversation_create),
            ("GET", "/v1/conversations/{cid}", self._conversation_get),
            ("POST", "/v1/conversations/{cid}", self._conversation_update),
            ("DELETE", "/v1/conversations/{cid}", self._conversation_delete),
            ("POST", "/v1/conversations/{cid}/items", self._items_create),
            ("GET", "/v1/conversations/{cid}/items", self._items_list),
            ("GET", "/v1/conversations/{cid}/items/{iid}", self._item_get),
            ("DELETE", "/v1/conversations/{cid}/items/{iid}", self._item_delete),
            ("POST", "/v1/files", self._file_create),
            ("GET", "/v1/files", self._file_list),
            ("GET", "/v1/files/{fid}", self._file_get),
            ("DELETE", "/v1/files/{fid}", self._file_delete),
            ("GET", "/v1/files/{fid}/content", self._file_content),
            ("POST", "/v1/containers", self._container_create),
            ("GET", "/v1/containers", self._container_list),
            ("GET", "/v1/containers/{cid}", self._container_get),
            ("DELETE", "/v1/containers/{cid}", self._container_delete),
            ("POST", "/v1/containers/{cid}/files", self._cfile_create),
            ("GET", "/v1/containers/{cid}/files", self._cfile_list),
            ("GET", "/v1/containers/{cid}/files/{fid}", self._cfile_get),
            ("DELETE", "/v1/containers/{cid}/files/{fid}", self._cfile_delete),
            ("GET", "/v1/containers/{cid}/files/{fid}/content", self._cfile_content),
            ("POST", "/v1/vector_stores", self._vs_create),
            ("GET", "/v1/vector_stores/{vid}", self._vs_get),
            ("DELETE", "/v1/vector_stores/{vid}", self._vs_delete),
            ("POST", "/v1/vector_stores/{vid}/files", self._vsf_create),
            ("GET", "/v1/vector_stores/{vid}/files", self._vsf_list),
            ("GET", "/v1/vector_stores/{vid}/files/{fid}", self._vsf_get),
            ("DELETE", "/v1/vector_stores/{vid}/files/{fid}", self._vsf_delete),
            ("POST", "/v1/vector_stores/{vid}/file_batches", self._batch_create),
            ("GET", "/v1/vector_stores/{vid}/file_batches/{bid}", self._batch_get),
            ("POST", "/v1/responses", self._response_create),
            ("GET", "/v1/responses/{rid}", self._response_get),
            ("DELETE", "/v1/responses/{rid}", self._response_delete),
            ("POST", "/v1/responses/{rid}/cancel", self._response_cancel),
            ("GET", "/v1/models/{model}", self._model_get),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, self._authed(handler))
        app.router.add_route("*", "/{tail:.*}", self._authed(self._unknown))

    async def _add_request_id(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("x-request-id", _hex("req_"))

    def _authed(self, handler: RouteHandler) -> RouteHandler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if recorded(request).bearer != self.api_key:
                return _error(401, "Incorrect API key", code="invalid_api_key")
            return await handler(request)

        return wrapped

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        return _error(404, f"Invalid URL ({request.method} {request.path})")

    @staticmethod
    def _json_body(request: web.Request) -> dict[str, Any]:
        body = recorded(request).json
        return body if isinstance(body, dict) else {}

    def _conversation(self, cid: str) -> ConversationState | None:
        conv = self.conversations.get(cid)
        return conv if conv is not None and not conv.deleted else None

    async def _conversation_create(self, request: web.Request) -> web.StreamResponse:
        body = self._json_body(request)
        items = body.get("items") or []
        if len(items) > 20:
            return _error(400, "Too many items (max 20).", param="items")
        conv = ConversationState(
            id=_hex("conv_"),
            created_at=_now(),
            metadata=dict(body.get("metadata") or {}),
            items=[_normalize_item(item) for item in items],
        )
        self.conversations[conv.id] = conv
        return web.json_response(conv.to_json())

    async def _conversation_get(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        conv = self._conversation(cid)
        if conv is None:
            return _not_found("Conversation", cid)
        return web.json_response(conv.to_json())

    async def _conversation_update(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        conv = self._conversation(cid)
        if conv is None:
            return _not_found("Conversation", cid)
        conv.metadata = dict(self._json_body(request).get("metadata") or {})
        return web.json_response(conv.to_json())

    async def _conversation_delete(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        conv = self._conversation(cid)
        if conv is None:
            return _not_found("Conversation", cid)
        conv.deleted = True
        return web.json_response({"id": cid, "object": "conversation.deleted", "deleted": True})

    async def _items_create(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        conv = self._conversation(cid)
        if conv is None:
            return _not_found("Conversation", cid)
        items = self._json_body(request).get("items")
        if not isinstance(items, list) or not items:
            return _error(400, "Missing required parameter: 'items'.", param="items")
        if len(items) > 20:
            return _error(400, "Too many items (max 20).", param="items")
        added = [_normalize_item(item) for item in items]
        conv.items.extend(added)
        return web.json_response(
            {
                "object": "list",
                "data": copy.deepcopy(added),
                "first_id": added[0]["id"],
                "last_id": added[-1]["id"],
                "has_more": False,
            }
        )

    async def _items_list(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        conv = self._conversation(cid)
        if conv is None:
            return _not_found("Conversation", cid)
        rec = recorded(request)
        items = _strip_ci_outputs(conv.items, _include_of(rec))
        return web.json_response(_paginate(items, rec.query, default_order="desc"))

    async def _item_get(self, request: web.Request) -> web.StreamResponse:
        cid, iid = request.match_info["cid"], request.match_info["iid"]
        conv = self._conversation(cid)
        if conv is None:
            return _not_found("Conversation", cid)
        for item in conv.items:
            if item.get("id") == iid:
                rendered = _strip_ci_outputs([item], _include_of(recorded(request)))
                return web.json_response(rendered[0])
        return _not_found("Item", iid)

    async def _item_delete(self, request: web.Request) -> web.StreamResponse:
        cid, iid = request.match_info["cid"], request.match_info["iid"]
        conv = self._conversation(cid)
        if conv is None:
            return _not_found("Conversation", cid)
        for item in conv.items:
            if item.get("id") == iid:
                conv.items.remove(item)
                return web.json_response(conv.to_json())
        return _not_found("Item", iid)

    async def _file_create(self, request: web.Request) -> web.StreamResponse:
        rec = recorded(request)
        part = rec.files.get("file")
        if part is None:
            return _error(400, "Missing required parameter: 'file'.", param="file")
        purpose = rec.form.get("purpose")
        if not purpose:
            return _error(400, "Missing required parameter: 'purpose'.", param="purpose")
        stored = self.add_file(
            part.filename,
            part.content,
            purpose=purpose,
            content_type=part.content_type or "application/octet-stream",
        )
        seconds = rec.form.get("expires_after[seconds]")
        if seconds:
            stored.expires_at = stored.created_at + int(seconds)
        return web.json_response(stored.to_json())

    async def _file_list(self, request: web.Request) -> web.StreamResponse:
        items = [f.to_json() for f in self.files.values()]
        return web.json_response(_paginate(items, recorded(request).query, default_order="desc"))

    async def _file_get(self, request: web.Request) -> web.StreamResponse:
        fid = request.match_info["fid"]
        stored = self.files.get(fid)
        if stored is None:
            return _error(404, f"No such File object: {fid}", param="id")
        return web.json_response(stored.to_json())

    async def _file_delete(self, request: web.Request) -> web.StreamResponse:
        fid = request.match_info["fid"]
        if self.files.pop(fid, None) is None:
            return _error(404, f"No such File object: {fid}", param="id")
        return web.json_response({"id": fid, "object": "file", "deleted": True})

    async def _file_content(self, request: web.Request) -> web.StreamResponse:
        fid = request.match_info["fid"]
        stored = self.files.get(fid)
        if stored is None:
            return _error(404, f"No such File object: {fid}", param="id")
        return web.Response(body=stored.content, content_type="application/octet-stream")

    def _new_container(
        self,
        name: str,
        expires_after: dict[str, Any] | None,
        memory_limit: str,
        file_ids: list[str],
    ) -> ContainerState:
        now = _now()
        container = ContainerState(
            id=_hex("cntr_"),
            name=name,
            status="active",
            created_at=now,
            last_active_at=now,
            expires_after=expires_after or {"anchor": "last_active_at", "minutes": 20},
            memory_limit=memory_limit,
        )
        for fid in file_ids:
            stored = self.files[fid]
            self._add_container_file(container, stored.filename, stored.content, source="user")
        self.containers[container.id] = container
        return container

    @staticmethod
    def _add_container_file(
        container: ContainerState, filename: str, content: bytes, *, source: str
    ) -> ContainerFile:
        cfile = ContainerFile(
            id=_hex("cfile_"),
            container_id=container.id,
            path=f"/mnt/data/{filename}",
            source=source,
            content=content,
            created_at=_now(),
        )
        container.files[cfile.id] = cfile
        container.touch()
        return cfile

    def _usable_container(self, cid: str) -> ContainerState | web.Response:
        container = self.containers.get(cid)
        if container is None:
            return _not_found("Container", cid)
        if container.status != "active":
            return _error(400, "Container is expired.")
        container.touch()
        return container

    async def _container_create(self, request: web.Request) -> web.StreamResponse:
        body = self._json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return _error(400, "Missing required parameter: 'name'.", param="name")
        file_ids = [str(fid) for fid in body.get("file_ids") or []]
        for fid in file_ids:
            if fid not in self.files:
                return _error(404, f"No such File object: {fid}", param="file_ids")
        container = self._new_container(
            name, body.get("expires_after"), str(body.get("memory_limit") or "1g"), file_ids
        )
        return web.json_response(container.to_json())

    async def _container_list(self, request: web.Request) -> web.StreamResponse:
        query = recorded(request).query
        name = query.get("name")
        items = [c.to_json() for c in self.containers.values() if name is None or c.name == name]
        return web.json_response(_paginate(items, query, default_order="desc"))

    async def _container_get(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        container = self.containers.get(cid)
        if container is None:
            return _not_found("Container", cid)
        if container.status == "active":
            container.touch()
        return web.json_response(container.to_json())

    async def _container_delete(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        if self.containers.pop(cid, None) is None:
            return _not_found("Container", cid)
        return web.json_response({"id": cid, "object": "container.deleted", "deleted": True})

    async def _cfile_create(self, request: web.Request) -> web.StreamResponse:
        found = self._usable_container(request.match_info["cid"])
        if isinstance(found, web.Response):
            return found
        rec = recorded(request)
        body = self._json_body(request)
        if body.get("file_id"):
            stored = self.files.get(str(body["file_id"]))
            if stored is None:
                return _error(404, f"No such File object: {body['file_id']}", param="file_id")
            cfile = self._add_container_file(found, stored.filename, stored.content, source="user")
        elif "file" in rec.files:
            part = rec.files["file"]
            cfile = self._add_container_file(found, part.filename, part.content, source="user")
        else:
            return _error(400, "Either 'file_id' or 'file' is required.", param="file_id")
        return web.json_response(cfile.to_json())

    async def _cfile_list(self, request: web.Request) -> web.StreamResponse:
        found = self._usable_container(request.match_info["cid"])
        if isinstance(found, web.Response):
            return found
        items = [f.to_json() for f in found.files.values()]
        return web.json_response(_paginate(items, recorded(request).query, default_order="desc"))

    def _cfile(self, request: web.Request) -> ContainerFile | web.Response:
        found = self._usable_container(request.match_info["cid"])
        if isinstance(found, web.Response):
            return found
        fid = request.match_info["fid"]
        cfile = found.files.get(fid)
        if cfile is None:
            return _not_found("File", fid)
        return cfile

    async def _cfile_get(self, request: web.Request) -> web.StreamResponse:
        cfile = self._cfile(request)
        if isinstance(cfile, web.Response):
            return cfile
        return web.json_response(cfile.to_json())

    async def _cfile_delete(self, request: web.Request) -> web.StreamResponse:
        cfile = self._cfile(request)
        if isinstance(cfile, web.Response):
            return cfile
        del self.containers[cfile.container_id].files[cfile.id]
        return web.json_response({"id": cfile.id, "object": "container.file.deleted", "deleted": True})

    async def _cfile_content(self, request: web.Request) -> web.StreamResponse:
        cfile = self._cfile(request)
        if isinstance(cfile, web.Response):
            return cfile
        return web.Response(body=cfile.content, content_type="application/octet-stream")

    # Vector stores (file_search)

    def _vector_store(self, request: web.Request) -> VectorStoreState | web.Response:
        vid = request.match_info["vid"]
        store = self.vector_stores.get(vid)
        return store if store is not None else _not_found("Vector store", vid)

    async def _vs_create(self, request: web.Request) -> web.StreamResponse:
        body = self._json_body(request)
        store = VectorStoreState(
            id=_hex("vs_"),
            name=str(body.get("name") or ""),
            created_at=_now(),
            metadata=dict(body.get("metadata") or {}),
        )
        self.vector_stores[store.id] = store
        for fid in body.get("file_ids") or []:
            self._index(store, str(fid))
        return web.json_response(store.to_json())

    async def _vs_get(self, request: web.Request) -> web.StreamResponse:
        store = self._vector_store(request)
        return store if isinstance(store, web.Response) else web.json_response(store.to_json())

    async def _vs_delete(self, request: web.Request) -> web.StreamResponse:
        store = self._vector_store(request)
        if isinstance(store, web.Response):
            return store
        del self.vector_stores[store.id]
        return web.json_response({"id": store.id, "object": "vector_store.deleted", "deleted": True})

    def _index(self, store: VectorStoreState, file_id: str) -> VectorStoreFileState | web.Response:
        if file_id not in self.files:
            return _error(404, f"No such File object: {file_id}", param="file_id")
        return store.files.setdefault(file_id, VectorStoreFileState(file_id, store.id, _now()))

    def _advance(self, state: VectorStoreFileState) -> None:
        """One look at an indexing file; after ``index_polls`` looks it is done."""
        if state.status != "in_progress":
            return
        state.polls += 1
        if state.polls < self.index_polls:
            return
        stored = self.files.get(state.file_id)
        if stored is None or stored.filename in self.unindexable:
            state.status = "failed"
            state.last_error = {"code": "unsupported_file", "message": "The file could not be parsed."}
        else:
            state.status = "completed"

    async def _vsf_create(self, request: web.Request) -> web.StreamResponse:
        store = self._vector_store(request)
        if isinstance(store, web.Response):
            return store
        state = self._index(store, str(self._json_body(request).get("file_id") or ""))
        return state if isinstance(state, web.Response) else web.json_response(state.to_json())

    async def _vsf_list(self, request: web.Request) -> web.StreamResponse:
        store = self._vector_store(request)
        if isinstance(store, web.Response):
            return store
        for state in store.files.values():
            self._advance(state)
        items = [f.to_json() for f in store.files.values()]
        return web.json_response(_paginate(items, recorded(request).query, default_order="desc"))

    def _vs_file(self, request: web.Request) -> VectorStoreFileState | web.Response:
        store = self._vector_store(request)
        if isinstance(store, web.Response):
            return store
        fid = request.match_info["fid"]
        state = store.files.get(fid)
        return state if state is not None else _not_found("File", fid)

    async def _vsf_get(self, request: web.Request) -> web.StreamResponse:
        state = self._vs_file(request)
        if isinstance(state, web.Response):
            return state
        self._advance(state)
        return web.json_response(state.to_json())

    async def _vsf_delete(self, request: web.Request) -> web.StreamResponse:
        state = self._vs_file(request)
        if isinstance(state, web.Response):
            return state
        del self.vector_stores[state.vector_store_id].files[state.file_id]
        return web.json_response(
            {"id": state.file_id, "object": "vector_store.file.deleted", "deleted": True}
        )

    def _batch_json(self, batch_id: str) -> dict[str, Any]:
        vid, file_ids = self._batches[batch_id]
        counts = self.vector_stores[vid].counts(file_ids)
        return {
            "id": batch_id,
            "object": "vector_store.files_batch",
            "created_at": _now(),
            "vector_store_id": vid,
            "status": "in_progress" if counts["in_progress"] else "completed",
            "file_counts": counts,
        }

    async def _batch_create(self, request: web.Request) -> web.StreamResponse:
        store = self._vector_store(request)
        if isinstance(store, web.Response):
            return store
        file_ids = [str(fid) for fid in self._json_body(request).get("file_ids") or []]
        if not file_ids:
            return _error(400, "Missing required parameter: 'file_ids'.", param="file_ids")
        for fid in file_ids:
            found = self._index(store, fid)
            if isinstance(found, web.Response):
                return found
        batch_id = _hex("vsfb_")
        self._batches[batch_id] = (store.id, file_ids)
        return web.json_response(self._batch_json(batch_id))

    async def _batch_get(self, request: web.Request) -> web.StreamResponse:
        store = self._vector_store(request)
        if isinstance(store, web.Response):
            return store
        bid = request.match_info["bid"]
        if bid not in self._batches:
            return _not_found("Batch", bid)
        for fid in self._batches[bid][1]:
            if fid in store.files:
                self._advance(store.files[fid])
        return web.json_response(self._batch_json(bid))

    def input_documents(self, body: dict[str, Any]) -> list[tuple[str, str, str]]:
        """``(file_id, filename, text)`` of the request's ``input_file`` parts, as the model reads them."""
        found = []
        for item in body.get("input") or []:
            for part in (item.get("content") if isinstance(item, dict) else None) or []:
                if isinstance(part, dict) and part.get("type") == "input_file":
                    stored = self.files.get(str(part.get("file_id")))
                    if stored is not None:
                        found.append(
                            (stored.id, stored.filename, document_text(stored.filename, stored.content))
                        )
        return found

    def searchable(self, body: dict[str, Any]) -> list[tuple[str, str, str]]:
        """``(file_id, filename, text)`` of the indexed files in the request's ``file_search`` stores."""
        found = []
        for tool in body.get("tools") or []:
            if not isinstance(tool, dict) or tool.get("type") != "file_search":
                continue
            for vid in tool.get("vector_store_ids") or []:
                store = self.vector_stores.get(str(vid))
                for state in store.files.values() if store else ():
                    stored = self.files.get(state.file_id)
                    if state.status == "completed" and stored is not None:
                        found.append(
                            (stored.id, stored.filename, document_text(stored.filename, stored.content))
                        )
        return found

    def answer_from_documents(self) -> None:
        """Script the model to answer from the documents it is shown or can search: the line that
        shares the most words with the question, citing a searched file (``file_citation``)."""

        def script(body: dict[str, Any]) -> Turn:
            question = _question_words(body)
            shown = [(doc, False) for doc in self.input_documents(body)]
            searched = [(doc, True) for doc in self.searchable(body)]
            best: tuple[int, str, tuple[str, str, str], bool] | None = None
            for (fid, name, text), cited in shown + searched:
                for line in text.splitlines():
                    score = len(question & set(re.findall(r"[a-z0-9]+", line.lower())))
                    if score and (best is None or score > best[0]):
                        best = (score, line.strip(), (fid, name, text), cited)
            if best is None:
                return Turn(text="I couldn't find that in any document I can read.", code=None)
            _, line, (fid, name, _text), cited = best
            return Turn(
                text=f"From {name}: {line}",
                code=None,
                citations=[(fid, name)] if cited else [],
                legacy_markers=cited,
            )

        self.script = script

    def _check_create(self, body: dict[str, Any]) -> web.Response | None:
        for key in ("model", "input"):
            if body.get(key) in (None, "", []):
                return _error(
                    400,
                    f"Missing required parameter: '{key}'.",
                    code="missing_required_parameter",
                    param=key,
                )
        if body.get("background") is not True:
            return _error(400, "This fake only supports background=true.", param="background")
        if body.get("store") is not True:
            return _error(400, "Background mode requires store=true.", param="store")
        return None

    def _code_interpreter(self, body: dict[str, Any]) -> tuple[bool, str | None] | web.Response:
        """(uses the tool, explicit container id), or the error for an unusable container."""
        uses_ci, container_id = False, None
        for tool in body.get("tools") or []:
            if not isinstance(tool, dict) or tool.get("type") != "code_interpreter":
                continue
            uses_ci = True
            ref = tool.get("container")
            if isinstance(ref, str):
                found = self._usable_container(ref)
                if isinstance(found, web.Response):
                    return found
                container_id = found.id
        return uses_ci, container_id

    async def _response_create(self, request: web.Request) -> web.StreamResponse:
        body = self._json_body(request)
        invalid = self._check_create(body)
        if invalid is not None:
            return invalid
        conv_ref = body.get("conversation")
        cid = conv_ref.get("id") if isinstance(conv_ref, dict) else conv_ref
        if not isinstance(cid, str) or not cid:
            return _error(400, "This fake requires 'conversation'.", param="conversation")
        if self._conversation(cid) is None:
            return _not_found("Conversation", cid)
        tool = self._code_interpreter(body)
        if isinstance(tool, web.Response):
            return tool
        for search in body.get("tools") or []:
            if isinstance(search, dict) and search.get("type") == "file_search":
                for vid in search.get("vector_store_ids") or []:
                    if vid not in self.vector_stores:
                        return _not_found("Vector store", str(vid))
        if self.active_response(cid) is not None:
            return _error(
                400,
                "Another process is currently operating on this conversation. Please retry in a few seconds.",
                code="conversation_locked",
            )
        state = ResponseState(
            id=_hex("resp_"),
            request=copy.deepcopy(body),
            turn=self._next_turn(copy.deepcopy(body)),
            conversation_id=cid,
            uses_code_interpreter=tool[0],
            container_id=tool[1],
            created_monotonic=time.monotonic(),
            body={},
        )
        state.body = _queued_body(state.id, cid, body)
        self.responses[state.id] = state
        if body.get("stream") is True:
            state.streamed = True
            player = asyncio.create_task(self._play(state, self.latency))
            self._players.add(player)
            player.add_done_callback(self._players.discard)
            if recorded(request).faulted:  # the client sees the fault, not the stream
                return web.json_response(self._render(state, set()))
            return await self._stream(request, state, after=-1)
        if 0 < self.latency < 600:
            asyncio.get_running_loop().call_later(self.latency, self._finish_by_itself, state)
        return web.json_response(self._render(state, _include_of(recorded(request))))

    def _render(self, state: ResponseState, include: set[str]) -> dict[str, Any]:
        include = include | set(state.request.get("include") or [])
        rendered = copy.deepcopy(state.body)
        rendered["output"] = _strip_ci_outputs(state.body["output"], include)
        return rendered

    def _response(self, request: web.Request) -> ResponseState | web.Response:
        rid = request.match_info["rid"]
        state = self.responses.get(rid)
        if state is None or state.deleted:
            return _error(404, f"Response with id '{rid}' not found.", param="response_id")
        return state

    async def _response_get(self, request: web.Request) -> web.StreamResponse:
        state = self._response(request)
        if isinstance(state, web.Response):
            return state
        query = recorded(request).query
        if query.get("stream") == "true":
            if not state.streamed:
                return _error(400, "Only responses created with stream=true can be streamed.", param="stream")
            try:
                after = int(query.get("starting_after", "-1"))
            except ValueError:
                return _error(400, "Invalid 'starting_after'.", param="starting_after")
            return await self._stream(request, state, after=after)
        state.retrieves += 1
        if state.streamed:
            if not state.terminal:
                state.body["status"] = "in_progress"
        elif not state.terminal:
            elapsed = time.monotonic() - state.created_monotonic
            if state.retrieves > 1 and elapsed >= self.latency:
                self._finish(state)
            else:
                state.body["status"] = "in_progress"
        return web.json_response(self._render(state, _include_of(recorded(request))))

    async def _response_cancel(self, request: web.Request) -> web.StreamResponse:
        state = self._response(request)
        if isinstance(state, web.Response):
            return state
        if not state.terminal:
            state.body["status"] = "cancelled"
        return web.json_response(self._render(state, set()))

    async def _response_delete(self, request: web.Request) -> web.StreamResponse:
        state = self._response(request)
        if isinstance(state, web.Response):
            return state
        state.deleted = True
        return web.json_response({"id": state.id, "object": "response.deleted", "deleted": True})

    # -- Streaming ---------------------------------------------------------------------------

    async def _stream(self, request: web.Request, state: ResponseState, *, after: int) -> web.StreamResponse:
        """Server-Sent Events: those after ``after``, then live ones until the terminal event."""
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        cut = self._cuts.pop(0) if self._cuts else None
        sent, index = 0, after + 1
        while True:
            changed = state.changed
            # What is there goes out in one write: a model that answers at once sends one burst.
            burst = []
            while index < len(state.events) and (cut is None or sent < cut):
                event = state.events[index]
                burst.append(f"event: {event['type']}\ndata: {jsonlib.dumps(event)}\n\n")
                index += 1
                sent += 1
            try:
                if burst:
                    await response.write("".join(burst).encode())
            except ConnectionResetError:
                return response  # the client went away
            if cut is not None and sent >= cut:
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-answer
                return response
            if state.ended or state.deleted:
                break
            await changed.wait()
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _emit(self, state: ResponseState, type_: str, **fields: Any) -> None:
        if type_ == "response.output_text.delta" and state.first_delta_at is None:
            state.first_delta_at = time.time()
        elif type_ in ("response.completed", "response.incomplete", "response.failed"):
            state.completed_at = time.time()
        state.events.append({"type": type_, "sequence_number": len(state.events), **fields})
        changed, state.changed = state.changed, asyncio.Event()
        changed.set()

    async def _until(self, state: ResponseState, at: float) -> None:
        """Wait until monotonic time ``at``, or less if complete() hurries the response on."""
        if at <= time.monotonic() or state.hurry.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, at - time.monotonic())):
                await state.hurry.wait()

    async def _play(self, state: ResponseState, latency: float) -> None:
        """The model at work: events of the turn, timed like a real streamed response."""
        include = set(state.request.get("include") or [])
        self._emit(state, "response.created", response=self._render(state, include))
        state.body["status"] = "in_progress"
        self._emit(state, "response.in_progress", response=self._render(state, include))
        ends = state.created_monotonic + (latency if latency < 600 else float("inf"))
        span = min(self.stream_span, latency) if latency < 600 else self.stream_span
        await self._until(state, ends - span)
        if not state.terminal:
            # The answer is known now, but the response stays in progress until its last event.
            before = copy.deepcopy(state.body)
            self._finish(state, append=False)
            state.final, state.body = state.body, before
        body = copy.deepcopy(state.final or state.body)
        if body["status"] in ("completed", "incomplete"):
            await self._play_output(state, body, include, ends, span)
        if state.final is not None and state.body["status"] == "in_progress":
            state.body = state.final
            self._append_turn(state, state.body["output"])
        terminal = {"completed": "response.completed", "incomplete": "response.incomplete"}
        if state.body["status"] != "cancelled":
            kind = terminal.get(state.body["status"], "response.failed")
            self._emit(state, kind, response=self._render(state, include))
        state.ended = True
        self._emit_nothing(state)

    def _emit_nothing(self, state: ResponseState) -> None:
        changed, state.changed = state.changed, asyncio.Event()
        changed.set()

    async def _play_output(
        self, state: ResponseState, body: dict[str, Any], include: set[str], ends: float, span: float
    ) -> None:
        output = _strip_ci_outputs(body["output"], include)
        for index, item in enumerate(output):
            if item["type"] == "code_interpreter_call":
                self._play_code(state, index, item)
            elif item["type"] == "message":
                await self._play_text(state, index, item, ends, span)
            else:
                self._emit(state, "response.output_item.added", output_index=index, item=item)
                self._emit(state, "response.output_item.done", output_index=index, item=item)

    def _play_code(self, state: ResponseState, index: int, item: dict[str, Any]) -> None:
        running = {**item, "status": "in_progress", "code": "", "outputs": None}
        self._emit(state, "response.output_item.added", output_index=index, item=running)
        ids = {"item_id": item["id"], "output_index": index}
        self._emit(state, "response.code_interpreter_call.in_progress", **ids)
        code = item.get("code") or ""
        if code:
            self._emit(state, "response.code_interpreter_call_code.delta", delta=code, **ids)
        self._emit(state, "response.code_interpreter_call_code.done", code=code, **ids)
        self._emit(state, "response.code_interpreter_call.interpreting", **ids)
        self._emit(state, "response.code_interpreter_call.completed", **ids)
        self._emit(state, "response.output_item.done", output_index=index, item=item)

    async def _play_text(
        self, state: ResponseState, index: int, item: dict[str, Any], ends: float, span: float
    ) -> None:
        started = {**item, "status": "in_progress", "content": []}
        self._emit(state, "response.output_item.added", output_index=index, item=started)
        for number, part in enumerate(item["content"]):
            ids = {"item_id": item["id"], "output_index": index, "content_index": number}
            empty = {**part, "text": "", "annotations": []} if part["type"] == "output_text" else part
            self._emit(state, "response.content_part.added", part=empty, **ids)
            if part["type"] == "output_text":
                words = re.findall(r"\S+\s*|\s+", part["text"]) or [""]
                begin = ends - span
                notes = list(enumerate(part.get("annotations") or []))
                written = 0
                for count, word in enumerate(words):
                    await self._until(state, begin + span * count / len(words))
                    self._emit(state, "response.output_text.delta", delta=word, logprobs=[], **ids)
                    written += len(word)
                    # A citation is announced as soon as its text has been written.
                    while notes and int(notes[0][1].get("end_index") or 0) <= written:
                        note_index, note = notes.pop(0)
                        self._emit(
                            state,
                            "response.output_text.annotation.added",
                            annotation=note,
                            annotation_index=note_index,
                            **ids,
                        )
                for note_index, note in notes:
                    self._emit(
                        state,
                        "response.output_text.annotation.added",
                        annotation=note,
                        annotation_index=note_index,
                        **ids,
                    )
                self._emit(state, "response.output_text.done", text=part["text"], logprobs=[], **ids)
            self._emit(state, "response.content_part.done", part=part, **ids)
        self._emit(state, "response.output_item.done", output_index=index, item=item)

    async def _model_get(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        if self.known_models is not None and model not in self.known_models:
            return _error(
                404,
                f"The model '{model}' does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return web.json_response(
            {"id": model, "object": "model", "created": 1_760_000_000, "owned_by": "openai"}
        )

    def _finish_by_itself(self, state: ResponseState) -> None:
        if not state.terminal and not state.deleted:
            self._finish(state)

    def _fail(self, state: ResponseState, error: dict[str, Any]) -> None:
        state.body.update({"status": "failed", "error": error, "output": [], "completed_at": None})

    def _turn_container(self, state: ResponseState) -> ContainerState | str | None:
        """The container the turn's code runs in (None: no code), or an error message."""
        turn = state.turn
        if state.container_id is not None:
            container = self.containers.get(state.container_id)
            if container is None or container.status != "active":
                return "Container is expired."
            return container
        if turn.charts or turn.extra_files or (state.uses_code_interpreter and turn.code):
            container = self._new_container("auto", None, "1g", [])
            state.container_id = container.id
            return container
        return None

    def _write_files(self, container: ContainerState, turn: Turn) -> dict[str, Any]:
        """Put the turn's files into the container; return the output_text part citing them."""
        text = turn.text
        annotations: list[dict[str, Any]] = []
        for chart in turn.charts:
            cfile = self._add_container_file(container, chart.filename, chart.content, source="assistant")
            if not chart.cite:
                continue
            text += " "
            start = len(text)
            text += f"[{chart.filename}](sandbox:/mnt/data/{chart.filename})"
            annotations.append(
                {
                    "type": "container_file_citation",
                    "container_id": container.id,
                    "file_id": cfile.id,
                    "filename": chart.cite_name or chart.filename,
                    "start_index": start,
                    "end_index": len(text),
                }
            )
        for filename, content in turn.extra_files:
            self._add_container_file(container, filename, content, source="assistant")
        text += turn.text_after_charts
        return {"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}

    def _finish(self, state: ResponseState, *, append: bool = True) -> None:
        if not state.streamed:
            state.completed_at = time.time()
        turn = state.turn
        if turn.status == "failed":
            default = {"code": "server_error", "message": "The model failed to generate a response."}
            self._fail(state, turn.error or default)
            return
        container = self._turn_container(state)
        if isinstance(container, str):
            self._fail(state, {"code": "server_error", "message": container})
            return
        part: dict[str, Any] = {"type": "output_text", "text": turn.text, "annotations": []}
        output: list[dict[str, Any]] = [{"type": "reasoning", "id": _hex("rs_"), "summary": []}]
        if container is not None:
            part = self._write_files(container, turn)
        for file_id, filename in turn.citations:
            if turn.legacy_markers:
                part["text"] += f" 【4:0†{filename}】"
            part["annotations"].append(
                {
                    "type": "file_citation",
                    "file_id": file_id,
                    "filename": filename,
                    "index": len(part["text"]),
                }
            )
        if any(
            isinstance(t, dict) and t.get("type") == "file_search" for t in state.request.get("tools") or []
        ):
            output.append(
                {
                    "type": "file_search_call",
                    "id": _hex("fs_"),
                    "status": "completed",
                    "queries": [],
                    "results": None,
                }
            )
        if container is not None and (turn.code is not None or turn.charts or turn.extra_files):
            output.append(
                {
                    "type": "code_interpreter_call",
                    "id": _hex("ci_"),
                    "status": "completed",
                    "container_id": container.id,
                    "code": turn.code,
                    "outputs": [{"type": "logs", "logs": turn.logs}],
                }
            )
        incomplete = turn.status == "incomplete"
        output.append(
            {
                "type": "message",
                "id": _hex("msg_"),
                "role": "assistant",
                "status": "incomplete" if incomplete else "completed",
                "phase": "final_answer",
                "content": [part],
            }
        )
        state.body.update(
            {
                "status": "incomplete" if incomplete else "completed",
                "completed_at": None if incomplete else _now(),
                "incomplete_details": (
                    {"reason": turn.incomplete_reason or "max_output_tokens"} if incomplete else None
                ),
                "output": output,
                "usage": _usage(state.request.get("input"), str(part["text"])),
            }
        )
        if append:
            self._append_turn(state, output)

    def _append_turn(self, state: ResponseState, output: list[dict[str, Any]]) -> None:
        conv = self._conversation(state.conversation_id)
        if conv is None:
            return
        raw_input = state.request.get("input")
        inputs = raw_input if isinstance(raw_input, list) else [raw_input]
        conv.items.extend(_normalize_item(item) for item in inputs)
        conv.items.extend(copy.deepcopy(output))


def _question_words(body: dict[str, Any]) -> set[str]:
    """The words of the user's question (its ``input_text``, without the bot's message tag)."""
    texts = []
    for item in body.get("input") or []:
        for part in (item.get("content") if isinstance(item, dict) else None) or []:
            if isinstance(part, dict) and part.get("type") == "input_text":
                texts.append(re.sub(r"\[slack message [^\]]*\]", "", str(part.get("text"))))
    stop = {"the", "what", "is", "in", "this", "of", "a", "an", "and", "to", "my", "me", "for", "does", "do"}
    return {w for w in re.findall(r"[a-z0-9]+", " ".join(texts).lower()) if w not in stop and len(w) > 1}


def _usage(request_input: Any, text: str) -> dict[str, Any]:
    input_tokens = max(1, len(jsonlib.dumps(request_input)) // 4)
    output_tokens = max(1, len(text) // 4) + 8
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 8},
        "total_tokens": input_tokens + output_tokens,
    }


__all__ = [
    "Chart",
    "ContainerFile",
    "ContainerState",
    "ConversationState",
    "FakeOpenAI",
    "ResponseState",
    "StoredFile",
    "Turn",
    "VectorStoreFileState",
    "VectorStoreState",
    "png_bytes",
]
