"""The only module that imports `openai`: Responses, Conversations, Containers and Files.

Everything leaving this module is one of our dataclasses or a `bot.errors.TutorError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import httpx2
import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.responses import Response, ResponseCodeInterpreterToolCall

from bot import errors
from bot.metrics import CallMetrics, Metrics

log = logging.getLogger(__name__)

INCLUDE: list[Any] = ["code_interpreter_call.outputs"]
TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
    }
)
#: `post`/`get` arguments for a stream whose events come as their JSON (see `_answer_event`).
_RAW_EVENTS: dict[str, Any] = {"cast_to": object, "stream": True, "stream_cls": AsyncStream[object]}
CONTAINER_IDLE_MINUTES = 20
#: A streamed answer may be silent this long (the model reasoning, code running) before the
#: connection counts as dropped and is picked up again after its last event.
STREAM_IDLE = 60.0
#: After a response's last event, how long the rest of its stream (normally only its end) is read.
STREAM_DRAIN = 2.0
#: Conversation items deleted at once (one DELETE each; the API has no bulk delete).
DELETE_CONCURRENCY = 8


@dataclass(frozen=True)
class ChartRef:
    """A file the model's code wrote and cited (`container_file_citation`)."""

    container_id: str
    file_id: str
    filename: str


@dataclass(frozen=True)
class Citation:
    """A document passage the answer cites (`file_citation`): an OpenAI file id and its name."""

    file_id: str
    filename: str
    #: Where OpenAI placed it in the text (unused: the Sources line goes under the answer).
    index: int = 0


@dataclass(frozen=True)
class IndexState:
    """A file's indexing in a vector store: in_progress, completed, failed or cancelled."""

    file_id: str
    status: str
    error_code: str | None = None
    error_message: str | None = None

    @property
    def done(self) -> bool:
        return self.status != "in_progress"


@dataclass(frozen=True)
class ContainerFile:
    id: str
    container_id: str
    path: str
    source: str
    created_at: int

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class TokenUsage:
    """What a response used (`usage`): cached tokens are part of the input, reasoning tokens of the output."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class ModelReply:
    """A response as the tutor needs it: status, the answer's text and the charts it cites."""

    response_id: str | None
    status: str
    text: str = ""
    charts: tuple[ChartRef, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    incomplete_reason: str | None = None
    refused: bool = False
    #: Containers the run's code executed in (where uncited charts may be).
    container_ids: tuple[str, ...] = ()
    #: Documents the answer cites (`file_citation`), de-duplicated, in order.
    citations: tuple[Citation, ...] = ()
    #: The model that answered and what it used; None when not known (an answer found among a
    #: conversation's items carries no usage).
    model: str | None = None
    usage: TokenUsage | None = None

    @property
    def ran_code(self) -> bool:
        return bool(self.container_ids)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def failure(self) -> errors.TutorError | None:
        """The error to tell the user, or None when the text can be posted as the answer."""
        if self.status == "completed":
            return errors.Refused() if self.refused and not self.text.strip() else None
        if self.status == "incomplete":
            if self.incomplete_reason == "content_filter":
                return errors.Refused()
            return None if self.text.strip() else errors.ModelFailed(f"incomplete: {self.incomplete_reason}")
        if self.status == "cancelled":
            return errors.RunTimedOut()
        if self.error_code == "rate_limit_exceeded":
            return errors.RateLimited(self.error_message or "")
        if self.error_code and self.error_code.startswith(("image", "invalid_image", "empty_image")):
            return errors.RequestRejected(self.error_code)
        return errors.ModelFailed(f"{self.error_code}: {self.error_message}")


@dataclass(frozen=True)
class WorkStep:
    """Code the model ran in its sandbox, and what it printed."""

    id: str
    code: str = ""
    output: str = ""
    done: bool = False


@dataclass(frozen=True)
class AnswerEvent:
    """One event of a streamed response, as the relay needs it. At most one of `response_id`
    (the response exists: the first event), `text` (a piece of the answer), `step` (work started
    or finished), `chart` (a file cited) and `reply` (the response is over) is set."""

    sequence: int
    response_id: str | None = None
    text: str = ""
    #: The output item the text belongs to (a new item starts a new paragraph).
    item_id: str = ""
    step: WorkStep | None = None
    #: A file the text just cited (a chart): it can be uploaded now.
    chart: ChartRef | None = None
    reply: ModelReply | None = None


@dataclass(frozen=True)
class RunRequest:
    """One model run on a thread's conversation."""

    model: str
    conversation_id: str
    instructions: str
    input_text: str
    container_id: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    reasoning_effort: str = "low"
    max_output_tokens: int = 16000
    image_file_ids: tuple[str, ...] = ()
    #: Documents shown to the model page by page (`input_file` parts).
    document_file_ids: tuple[str, ...] = ()
    #: Vector stores the model searches (`file_search`): the thread's, the channel library's.
    vector_store_ids: tuple[str, ...] = ()


class OpenAIGateway:
    """Async facade over the OpenAI SDK with the retry policy openai.md §9 asks for."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        max_retries: int = 1,
        timeout: float = 10.0,
        metrics: CallMetrics | None = None,
    ) -> None:
        # Deadlines fit the call: a retrieve or a list is quick or it is an outage, and the poller
        # retries it later; only uploads of large files get minutes.
        self._client = AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=max_retries,
            timeout=openai.Timeout(timeout, connect=min(5.0, timeout)),
            # The SDK's aiohttp transport: httpx's own pool checks every idle connection's socket
            # on each request, which was ~5 % of a busy worker's CPU with a hundred runs at once.
            http_client=openai.DefaultAioHttpClient(),
        )
        self._timeout = timeout
        # POST /responses carries no idempotency key: an SDK retry could start a second run.
        # A background create only enqueues the run.
        self._create_client = self._client.with_options(max_retries=0, timeout=2 * timeout)
        self._stream_timeout = openai.Timeout(max(STREAM_IDLE, timeout), connect=min(5.0, timeout))
        self._metrics = metrics or Metrics().openai

    async def close(self) -> None:
        await self._client.close()

    @contextlib.contextmanager
    def _calling(self, what: str, *, creating: bool = False, missing_ok: bool = False) -> Iterator[None]:
        """The one place an SDK call is counted, timed and its error translated; with `missing_ok`
        a 404 ends the block quietly (the caller goes on after it)."""
        try:
            with self._metrics.timing(what, _error_name):
                yield
        except openai.OpenAIError as exc:
            if missing_ok and isinstance(exc, openai.NotFoundError):
                return
            raise _translate(exc, what, creating=creating) from None

    async def create_conversation(self, metadata: Mapping[str, str]) -> str:
        with self._calling("conversations.create"):
            conversation = await self._client.conversations.create(metadata=dict(metadata))
        return conversation.id

    async def ensure_container(
        self, container_id: str | None, *, name: str, file_ids: Iterable[str] = ()
    ) -> tuple[str, bool]:
        """Return an active container id, and whether it is new (files re-added, Python state gone)."""
        if container_id:
            with self._calling("containers.retrieve", missing_ok=True):
                container = await self._client.containers.retrieve(container_id)
                if container.status == "active":
                    return container.id, False
        with self._calling("containers.create"):
            created = await self._client.containers.create(
                name=name[:200],
                expires_after={"anchor": "last_active_at", "minutes": CONTAINER_IDLE_MINUTES},
                file_ids=list(file_ids),
                timeout=6 * self._timeout,  # copies the thread's files into the new sandbox
            )
        return created.id, True

    async def upload_file(self, name: str, content: IO[bytes], mimetype: str) -> str:
        """Files API upload (purpose user_data), streamed from `content`; returns the file id."""
        with self._calling("files.create"):
            uploaded = await self._client.files.create(
                file=(name, content, mimetype), purpose="user_data", timeout=600.0
            )
        return uploaded.id

    async def add_to_container(self, container_id: str, file_id: str) -> str:
        """Copy a Files API file into the sandbox; returns the path the code sees."""
        with self._calling("containers.files.create"):
            added = await self._client.containers.files.create(container_id, file_id=file_id, timeout=300.0)
        return added.path

    async def start_run(self, request: RunRequest) -> ModelReply:
        """Create a background response that is polled (the fallback of `stream_run`)."""
        with self._calling("responses.create", creating=True):
            response = await self._create_client.responses.create(**_create_arguments(request))
        log.info("response %s created (request %s)", response.id, response._request_id)
        return _reply_from(response.id, response.status or "queued", response.output, response)

    async def stream_run(self, request: RunRequest) -> AsyncGenerator[AnswerEvent, None]:
        """Create a background response and follow its events. Until the first event names the
        response, a dropped connection is an AmbiguousCreate; after it, a StreamDropped."""
        try:
            # The create's own deadline holds until the stream's headers arrive; then the stream's.
            async with asyncio.timeout(2 * self._timeout):
                with self._calling("responses.create", creating=True):
                    stream = await self._create_client.post(
                        "/responses",
                        body={**_create_arguments(request), "stream": True},
                        options={"timeout": self._stream_timeout, "security": {"bearer_auth": True}},
                        **_RAW_EVENTS,
                    )
        except TimeoutError:
            log.warning("responses.create: no answer within %.1fs", 2 * self._timeout)
            raise errors.AmbiguousCreate("responses.create: timed out") from None
        async with contextlib.aclosing(self._events(stream, "responses.create", known=False)) as events:
            async for event in events:
                yield event

    async def resume_run(self, response_id: str, *, after: int | None) -> AsyncGenerator[AnswerEvent, None]:
        """The events of a streamed response after sequence number `after` (all if None)."""
        try:
            async with asyncio.timeout(2 * self._timeout):
                stream = await self._open_resume(response_id, after)
        except TimeoutError:
            raise errors.StreamDropped("responses.retrieve: no stream within the deadline") from None
        async with contextlib.aclosing(self._events(stream, "responses.retrieve", known=True)) as events:
            async for event in events:
                yield event

    async def _open_resume(self, response_id: str, after: int | None) -> Any:
        query: dict[str, Any] = {"include": INCLUDE, "stream": True}
        if after is not None:
            query["starting_after"] = after
        with self._calling("responses.retrieve"):
            return await self._client.get(
                f"/responses/{response_id}",
                options={"params": query, "timeout": self._stream_timeout, "security": {"bearer_auth": True}},
                **_RAW_EVENTS,
            )

    async def _events(self, stream: Any, what: str, *, known: bool) -> AsyncGenerator[AnswerEvent, None]:
        """Our events of an SDK stream. `__anext__`, not `async for`: the SDK's stream is a chain
        of async generators (down to httpx's `aiter_raw`), and one left suspended is closed by the
        garbage collector whenever it runs, each generator on its own, which can fail with "async
        generator already executing" in whatever runs then. After the last event the rest of the
        body (normally nothing) is read, so the chain ends by itself."""
        finished = False
        try:
            while True:
                try:
                    raw = await stream.__anext__()
                except StopAsyncIteration:
                    finished = True
                    return
                event = _answer_event(raw)
                if event is None:
                    continue
                known = known or event.response_id is not None
                finished = event.reply is not None
                yield event
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            log.warning("%s: the event stream broke off (%s)", what, type(exc).__name__)
            if not known:
                raise errors.AmbiguousCreate(f"{what}: stream lost before the response id") from None
            raise errors.StreamDropped(f"{what}: {type(exc).__name__}", retry_after=0.2) from None
        finally:
            if finished:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STREAM_DRAIN):
                        while True:
                            await stream.__anext__()
            with contextlib.suppress(Exception):
                await stream.close()

    async def work_of(self, response_id: str) -> list[WorkStep]:
        """The code a stored response ran and what it printed ("Show work")."""
        with self._calling("responses.retrieve"):
            response = await self._client.responses.retrieve(response_id, include=INCLUDE)
        return [_step(item) for item in response.output if item.type == "code_interpreter_call"]

    async def get_run(self, response_id: str) -> ModelReply:
        with self._calling("responses.retrieve"):
            response = await self._client.responses.retrieve(response_id, include=INCLUDE)
        return _reply_from(response.id, response.status or "queued", response.output, response)

    async def cancel_run(self, response_id: str) -> ModelReply:
        with self._calling("responses.cancel"):
            response = await self._client.responses.cancel(response_id)
        return _reply_from(response.id, response.status or "cancelled", response.output, response)

    async def find_answer(self, conversation_id: str, marker: str) -> ModelReply | None:
        """After an ambiguous create: the answer to the turn that starts with `marker`, if it landed."""
        with self._calling("conversations.items.list"):
            page = await self._client.conversations.items.list(
                conversation_id, order="desc", limit=50, include=INCLUDE
            )
        newer: list[Any] = []
        for item in page.data:
            if item.type == "message" and item.role == "user":
                if any(marker in (getattr(part, "text", "") or "") for part in item.content):
                    if not newer:
                        return None
                    return _reply_from(None, "completed", reversed(newer), None)
                newer = []
            else:
                newer.append(item)
        return None

    async def list_container_files(self, container_id: str) -> list[ContainerFile]:
        found: list[ContainerFile] = []
        with self._calling("containers.files.list"):
            async for item in self._client.containers.files.list(container_id, order="asc", limit=100):
                found.append(
                    ContainerFile(
                        id=item.id,
                        container_id=container_id,
                        path=item.path,
                        source=item.source,
                        created_at=int(item.created_at),
                    )
                )
        return found

    async def download_container_file(self, container_id: str, file_id: str) -> bytes:
        with self._calling("containers.files.content"):
            content = await self._client.containers.files.content.retrieve(
                file_id, container_id=container_id, timeout=max(60.0, self._timeout)
            )
        return content.content

    async def delete_conversation(self, conversation_id: str) -> None:
        """Delete a conversation's items, then the conversation: deleting a conversation leaves its
        items (openai.md §4.8). Repeatable: what is already gone is skipped."""
        deleted: set[str] = set()
        while page := await self._item_ids(conversation_id, limit=100):
            if deleted.issuperset(page):  # listed again after being deleted: not gone yet
                raise errors.OpenAIUnavailable(f"conversation {conversation_id}: items remain after delete")
            await self._delete_items(conversation_id, page)
            deleted.update(page)
        await self._delete(self._client.conversations.delete(conversation_id), "conversations.delete")

    async def delete_turn(self, conversation_id: str, marker: str) -> None:
        """Delete one question's turn from a conversation others go on using: the user message that
        starts with `marker` and the items after it up to the next user message (its answer, code,
        reasoning). The rest of the conversation stays."""
        turn: list[str] = []
        with self._calling("conversations.items.list", missing_ok=True):
            async for item in self._client.conversations.items.list(conversation_id, order="asc", limit=100):
                if item.type == "message" and item.role == "user":
                    if turn:
                        break
                    if any(marker in (getattr(part, "text", "") or "") for part in item.content):
                        turn.append(item.id)
                elif turn and item.id:
                    turn.append(item.id)
        await self._delete_items(conversation_id, turn)

    async def _item_ids(self, conversation_id: str, *, limit: int) -> list[str]:
        """The ids of a conversation's first items; [] once it is empty or gone."""
        with self._calling("conversations.items.list", missing_ok=True):
            page = await self._client.conversations.items.list(conversation_id, order="asc", limit=limit)
            return [item.id for item in page.data if item.id]
        return []

    async def _delete_items(self, conversation_id: str, item_ids: Sequence[str]) -> None:
        gate = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def delete(item_id: str) -> None:
            async with gate:
                await self._delete(
                    self._client.conversations.items.delete(item_id, conversation_id=conversation_id),
                    "conversations.items.delete",
                )

        await asyncio.gather(*(delete(item_id) for item_id in item_ids))

    async def delete_response(self, response_id: str) -> None:
        """A stored response (kept ≥ 30 days otherwise): its input, output and code."""
        await self._delete(self._client.responses.delete(response_id), "responses.delete")

    async def delete_container(self, container_id: str) -> None:
        await self._delete(self._client.containers.delete(container_id), "containers.delete")

    async def delete_file(self, file_id: str) -> None:
        await self._delete(self._client.files.delete(file_id), "files.delete")

    async def create_vector_store(self, name: str, metadata: Mapping[str, str]) -> str:
        with self._calling("vector_stores.create"):
            store = await self._client.vector_stores.create(name=name[:200], metadata=dict(metadata))
        return store.id

    async def add_to_vector_store(self, vector_store_id: str, file_ids: Sequence[str]) -> None:
        """Start indexing files in a store (one batch); their progress is read with `index_state`."""
        with self._calling("vector_stores.file_batches.create"):
            await self._client.vector_stores.file_batches.create(
                vector_store_id, file_ids=list(file_ids), timeout=2 * self._timeout
            )

    async def index_states(self, vector_store_id: str) -> dict[str, IndexState]:
        """How indexing goes for every file of a store, by file id (one listing, paginated)."""
        found: dict[str, IndexState] = {}
        with self._calling("vector_stores.files.list"):
            async for item in self._client.vector_stores.files.list(vector_store_id, limit=100):
                error = item.last_error
                found[item.id] = IndexState(
                    file_id=item.id,
                    status=item.status,
                    error_code=error.code if error else None,
                    error_message=error.message if error else None,
                )
        return found

    async def delete_vector_store(self, vector_store_id: str) -> None:
        await self._delete(self._client.vector_stores.delete(vector_store_id), "vector_stores.delete")

    async def delete_vector_store_file(self, ref: str) -> None:
        """Take a file out of a store (`ref` is "<store id>/<file id>", as `repo.forget_documents` queues
        it); the Files API file stays until deleted."""
        vector_store_id, _, file_id = ref.partition("/")
        await self._delete(
            self._client.vector_stores.files.delete(file_id, vector_store_id=vector_store_id),
            "vector_stores.files.delete",
        )

    async def check_model(self, model: str) -> None:
        """For `doctor`: the key works and the model exists."""
        with self._calling("models.retrieve"):
            await self._client.models.retrieve(model)

    async def _delete(self, call: Any, what: str) -> None:
        with self._calling(what, missing_ok=True):  # already gone is as good as deleted
            await call


def _create_arguments(request: RunRequest) -> dict[str, Any]:
    """The body of `POST /v1/responses`: the user's turn (text, images, documents), tools and settings."""
    content: list[Any] = [{"type": "input_text", "text": request.input_text}]
    for file_id in request.image_file_ids:
        content.append({"type": "input_image", "file_id": file_id, "detail": "auto"})
    for file_id in request.document_file_ids:
        content.append({"type": "input_file", "file_id": file_id})
    tools: list[Any] = []
    if request.container_id:
        tools.append({"type": "code_interpreter", "container": request.container_id})
    if request.vector_store_ids:
        tools.append({"type": "file_search", "vector_store_ids": list(request.vector_store_ids)})
    return {
        "model": request.model,
        "conversation": request.conversation_id,
        "instructions": request.instructions,
        "input": [{"role": "user", "content": content}],
        "tools": tools,
        "include": INCLUDE,
        "background": True,
        "store": True,
        "truncation": "auto",
        "max_output_tokens": request.max_output_tokens,
        "reasoning": {"effort": request.reasoning_effort},
        "metadata": dict(request.metadata),
    }


def _answer_event(raw: Any) -> AnswerEvent | None:
    """Our event for a stream event (its JSON, as a dict); None for one without a sequence number.

    Events stay dicts: the SDK would validate each against the union of every event type, which
    cost about a tenth of a worker's CPU (one event per word of the answer). Only what is read
    as a whole (a code call, the final response) is built into the SDK's models.
    """
    if not isinstance(raw, dict):
        return None
    sequence = raw.get("sequence_number")
    if not isinstance(sequence, int):
        return None
    kind = raw.get("type", "")
    if kind == "response.output_text.delta":
        return AnswerEvent(sequence, text=str(raw.get("delta") or ""), item_id=str(raw.get("item_id") or ""))
    if kind == "response.created":
        return AnswerEvent(sequence, response_id=(raw.get("response") or {}).get("id"))
    if kind in ("response.output_item.added", "response.output_item.done"):
        item = raw.get("item") or {}
        if item.get("type") == "code_interpreter_call":
            step = _step(ResponseCodeInterpreterToolCall.construct(**item), done=kind.endswith(".done"))
            return AnswerEvent(sequence, step=step)
        return AnswerEvent(sequence)
    if kind == "response.output_text.annotation.added":
        note = raw.get("annotation") or {}
        if note.get("type") == "container_file_citation":
            chart = ChartRef(str(note["container_id"]), str(note["file_id"]), str(note.get("filename") or ""))
            return AnswerEvent(sequence, chart=chart)
        return AnswerEvent(sequence)
    if kind in ("response.completed", "response.incomplete", "response.failed"):
        response = Response.construct(**(raw.get("response") or {}))
        return AnswerEvent(
            sequence, reply=_reply_from(response.id, response.status or "failed", response.output, response)
        )
    if kind == "error":
        log.warning("response stream error: code=%s message=%s", raw.get("code"), raw.get("message"))
        raise errors.StreamDropped(f"stream error {raw.get('code')}", retry_after=1.0)
    return AnswerEvent(sequence)


def _step(item: Any, *, done: bool = True) -> WorkStep:
    logs = [str(out.logs) for out in item.outputs or () if getattr(out, "type", "") == "logs" and out.logs]
    return WorkStep(id=item.id, code=item.code or "", output="".join(logs), done=done)


def _reply_from(response_id: str | None, status: str, items: Iterable[Any], response: Any) -> ModelReply:
    """Walk output items by type (never `output_text`: it glues messages and drops citations)."""
    texts: list[str] = []
    charts: dict[str, ChartRef] = {}
    citations: dict[str, Citation] = {}
    refused = False
    containers: dict[str, None] = {}
    for item in items:
        if item.type == "code_interpreter_call" and getattr(item, "container_id", None):
            containers[item.container_id] = None
        if item.type != "message" or getattr(item, "role", "assistant") != "assistant":
            continue
        for part in item.content:
            if part.type == "output_text":
                texts.append(part.text)
                for note in part.annotations or ():
                    if note.type == "container_file_citation":
                        _add_chart(charts, ChartRef(note.container_id, note.file_id, note.filename))
                    elif note.type == "file_citation":
                        citations.setdefault(note.file_id, Citation(note.file_id, note.filename, note.index))
            elif part.type == "refusal":
                refused = True
                texts.append(part.refusal)
    error = getattr(response, "error", None)
    incomplete = getattr(response, "incomplete_details", None)
    return ModelReply(
        response_id=response_id,
        status=status,
        text="\n\n".join(t for t in texts if t.strip()),
        charts=tuple(charts.values()),
        error_code=getattr(error, "code", None),
        error_message=getattr(error, "message", None),
        incomplete_reason=getattr(incomplete, "reason", None),
        refused=refused,
        container_ids=tuple(containers),
        citations=tuple(citations.values()),
        model=getattr(response, "model", None) or None,
        usage=_usage_of(getattr(response, "usage", None)),
    )


def _usage_of(usage: Any) -> TokenUsage | None:
    if usage is None:
        return None
    return TokenUsage(
        input_tokens=usage.input_tokens or 0,
        cached_tokens=getattr(usage.input_tokens_details, "cached_tokens", 0) or 0,
        output_tokens=usage.output_tokens or 0,
        reasoning_tokens=getattr(usage.output_tokens_details, "reasoning_tokens", 0) or 0,
    )


def _add_chart(charts: dict[str, ChartRef], chart: ChartRef) -> None:
    """De-duplicate by file id, preferring a descriptive name over a generic `cfile_…` one."""
    known = charts.get(chart.file_id)
    if known is None or (known.filename.startswith("cfile_") and not chart.filename.startswith("cfile_")):
        charts[chart.file_id] = chart


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def _error_name(exc: Exception) -> str:
    """A metric label for a failed call: the HTTP status, or the exception (timeout, connection)."""
    if isinstance(exc, openai.APIStatusError):
        return str(exc.status_code)
    return type(exc).__name__


def _translate(exc: openai.OpenAIError, what: str, *, creating: bool = False) -> errors.TutorError:
    """Map an SDK exception onto the error the user will read; log the cause once, never the key."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        log.warning("%s: %s", what, type(exc).__name__)
        return errors.AmbiguousCreate(what) if creating else errors.OpenAIUnavailable(what)
    if not isinstance(exc, openai.APIStatusError):
        log.error("%s: unexpected %s", what, type(exc).__name__)
        return errors.OpenAIUnavailable(what)
    status, code, message = exc.status_code, exc.code, exc.message
    log.warning(
        "%s failed: status=%s code=%s type=%s param=%s request_id=%s",
        what,
        status,
        code,
        exc.type,
        exc.param,
        exc.request_id,
    )
    detail = f"{what}: {status} {code or ''}".strip()
    if status == 429:
        if code in QUOTA_CODES or exc.type == "insufficient_quota":
            return errors.QuotaExhausted(detail)
        return errors.RateLimited(detail, retry_after=_retry_after(exc))
    if status >= 500:
        return errors.AmbiguousCreate(detail) if creating else errors.OpenAIUnavailable(detail)
    if status in (401, 403):
        return errors.TutorMisconfigured(detail)
    if status == 404:
        return errors.ContextLost(detail)
    if code == "conversation_locked" or status == 409:
        return errors.ConversationBusy(detail, retry_after=3.0)
    if "container is expired" in (message or "").lower():
        return errors.ContainerExpired(detail)
    if code == "context_length_exceeded":
        return errors.ContextTooLong(detail)
    return errors.RequestRejected(detail)
