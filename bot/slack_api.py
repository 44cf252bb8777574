"""The only module that calls the Slack Web API directly (Bolt's listeners aside)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot import errors
from bot.metrics import CallMetrics, Metrics
from bot.pacing import Pacer, SharedRateLimitHandler

log = logging.getLogger(__name__)

REPLY_EVENT_TYPE = "tutor_reply"
#: Errors after which posting into that place again cannot succeed.
FINAL_ERRORS = frozenset(
    {
        "not_in_channel",
        "channel_not_found",
        "is_archived",
        "restricted_action",
        "invalid_auth",
        "account_inactive",
        "token_revoked",
        "missing_scope",
        "msg_too_long",
        "invalid_blocks",
    }
)
DISPLAY_NAME_TTL = 3600.0
#: How long a user's admin status (users.info) is trusted before it is asked again.
ADMIN_TTL = 60.0
#: Deadline of one Web API request: a hung Slack holds one run, not the worker, and the replier
#: retries after looking for what landed.
CALL_TIMEOUT = 15
#: Cosmetic calls (status, title, display name) never hold up an answer longer than this.
COSMETIC_TIMEOUT = 5.0
#: One call of a live answer (start/append/stop, or an edit of the preview): a slow one is skipped
#: and its text goes with the next, so it must not hold the stream long.
STREAM_CALL_TIMEOUT = 5
#: Errors of chat.startStream that mean "this surface or token can't stream": post instead.
STREAM_REFUSALS = frozenset(
    {
        "channel_type_not_supported",
        "not_allowed_token_type",
        "invalid_arguments",
        "missing_recipient_user_id",
        "missing_recipient_team_id",
        "method_deprecated",
        "unknown_method",
        "feature_not_enabled",
        "not_implemented",
    }
)
STREAM_CLOSED = "message_not_in_streaming_state"
LOADING_MESSAGES = (
    "Reading your question…",
    "Working it out…",
    "Checking the numbers…",
)


#: Deadline of a file transfer (download of a share, upload of a chart): large files take a while.
TRANSFER_TIMEOUT = aiohttp.ClientTimeout(total=600, sock_read=60)
#: An idle connection to Slack is closed after this long (before Slack's end closes it, so a call
#: is not sent on a connection that is going away).
KEEPALIVE = 10.0


class SlackConnections:
    """Keep-alive connections to Slack, shared by a gateway's clients and its file transfers.

    slack_sdk opens, and closes, a new aiohttp session (so a new TCP and TLS connection) for each
    call of a client made without one. One connector here, with a session per deadline: slack_sdk
    applies a running session's own timeout, not the client's. Bound to the event loop that first
    used it; elsewhere, and once closed, `session` is None and slack_sdk falls back to its own.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connector: aiohttp.TCPConnector | None = None
        self._sessions: dict[aiohttp.ClientTimeout, aiohttp.ClientSession] = {}
        self._closed = False

    def session(self, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if self._closed or (self._loop is not None and loop is not self._loop):
            return None
        session = self._sessions.get(timeout)
        if session is None:
            if self._connector is None:
                self._loop = loop
                self._connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE)
            session = self._sessions[timeout] = aiohttp.ClientSession(
                connector=self._connector, connector_owner=False, timeout=timeout
            )
        return session

    async def close(self) -> None:
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
        if self._connector is not None:
            await self._connector.close()


class PooledWebClient(AsyncWebClient):
    """An AsyncWebClient whose calls reuse the connections of `connections`."""

    def __init__(self, *, connections: SlackConnections, **kwargs: Any) -> None:
        self.connections = connections
        super().__init__(**kwargs)
        self._deadline = aiohttp.ClientTimeout(total=self.timeout)

    @property
    def session(self) -> aiohttp.ClientSession | None:  # read by slack_sdk for every call
        return self.connections.session(self._deadline)

    @session.setter
    def session(self, value: aiohttp.ClientSession | None) -> None:
        if value is not None:
            raise TypeError("a PooledWebClient's sessions are its connections'")


def make_web_client(token: str | None, base_url: str, *, pacer: Pacer | None = None) -> PooledWebClient:
    """The client Bolt and the replier share; 429s and 5xx are retried, not only dropped sockets.

    A 429's Retry-After is honoured by every call of the process that shares `pacer`. Its
    connections are kept (`SlackConnections`) and closed with the gateway that uses the client.
    """
    return PooledWebClient(
        connections=SlackConnections(),
        token=token,
        base_url=base_url,
        timeout=CALL_TIMEOUT,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=1),
            SharedRateLimitHandler(pacer or Pacer()),
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ],
    )


@dataclass(frozen=True)
class SlackFile:
    """What files.info says about a shared file: where to download it, and the full object."""

    id: str
    download_url: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class Recipient:
    """Whom a streamed answer is for (Slack requires it outside DMs)."""

    user_id: str
    team_id: str


@dataclass(frozen=True)
class Place:
    """Where a reply goes: a channel, and the thread root (None for the top level of a DM)."""

    channel_id: str
    thread_ts: str | None


#: An uploaded file: not there (yet), uploaded but still being processed, or ready to be shown.
UploadState = Literal["missing", "processing", "processed"]
#: Pauses between files.info checks while an upload is processed (Tier 4: 100+/min).
PROCESSING_BACKOFF = (0.1, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0)

SLACK_FILE_ORIGIN = "https://files.slack.com"
#: Slack may announce a file before it has processed it: files.info is retried after these pauses.
FILE_INFO_BACKOFF = (0.5, 1.0, 2.0)
DOWNLOAD_CHUNK = 1 << 20
MAX_REDIRECTS = 3


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class SlackGateway:
    def __init__(
        self, client: AsyncWebClient, *, metrics: CallMetrics | None = None, pacer: Pacer | None = None
    ) -> None:
        self.client = client
        self._metrics = metrics or Metrics().slack
        #: Slack's limits for every run of this process: per-channel posting pace, shared 429s.
        self.pacer = pacer or _pacer_of(client) or Pacer()
        # The bot token is only ever sent to Slack's file host and the configured API host.
        self.file_origins = frozenset({SLACK_FILE_ORIGIN, origin(client.base_url)})
        #: Connections to Slack kept open for every call and transfer of this gateway.
        self.connections = client.connections if isinstance(client, PooledWebClient) else SlackConnections()
        # Posting is not idempotent: a 5xx or dropped connection may hide a success, and a blind
        # retry would post twice. Only 429s (refused, so nothing happened) are retried here; the
        # replier retries the rest after checking what reached the thread.
        self._post_client = PooledWebClient(
            connections=self.connections,
            token=client.token,
            base_url=client.base_url,
            timeout=CALL_TIMEOUT,
            retry_handlers=[SharedRateLimitHandler(self.pacer)],
        )
        # A live answer's calls are never retried by the SDK: a retried append would show its text
        # twice, and a 429 is the relay's to honour (it keeps collecting text meanwhile).
        self._stream_client = PooledWebClient(
            connections=self.connections,
            token=client.token,
            base_url=client.base_url,
            timeout=STREAM_CALL_TIMEOUT,
            retry_handlers=[],
        )
        self._names: dict[str, tuple[str, float]] = {}
        self._admins: dict[str, tuple[bool, float]] = {}

    async def close(self) -> None:
        await self.connections.close()

    async def post(
        self, place: Place, text: str, *, delivery_key: str, blocks: Sequence[dict[str, Any]] | None = None
    ) -> str:
        """Post one message, tagged with `delivery_key` so a retry can find it; return its ts."""
        await self.pacer.wait_turn("chat.postMessage", place.channel_id)
        response = await self._call(
            "chat.postMessage",
            self._post_client.chat_postMessage(
                channel=place.channel_id,
                thread_ts=place.thread_ts,
                text=text,
                blocks=list(blocks) if blocks else None,
                unfurl_links=False,
                unfurl_media=False,
                metadata={"event_type": REPLY_EVENT_TYPE, "event_payload": {"delivery": delivery_key}},
            ),
        )
        return str(response["ts"])

    async def update(
        self,
        place: Place,
        ts: str,
        text: str,
        *,
        delivery_key: str,
        blocks: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Rewrite one of our messages (a finished live answer), tagged like a post; repeatable."""
        await self._call(
            "chat.update",
            self._post_client.chat_update(
                channel=place.channel_id,
                ts=ts,
                text=text,
                blocks=list(blocks) if blocks else [],
                metadata={"event_type": REPLY_EVENT_TYPE, "event_payload": {"delivery": delivery_key}},
            ),
        )

    async def delete(self, place: Place, ts: str) -> None:
        await self._call("chat.delete", self._post_client.chat_delete(channel=place.channel_id, ts=ts))

    async def post_ephemeral(
        self, place: Place, user_id: str, text: str, *, blocks: Sequence[dict[str, Any]] | None = None
    ) -> None:
        await self._call(
            "chat.postEphemeral",
            self._post_client.chat_postEphemeral(
                channel=place.channel_id,
                user=user_id,
                thread_ts=place.thread_ts,
                text=text,
                blocks=list(blocks) if blocks else None,
            ),
        )

    # A live answer: a stream (chat.startStream/appendStream/stopStream), or where Slack won't
    # stream, a posted preview edited as it grows. Errors: StreamRefused, StreamClosed,
    # SlackRateLimited, else SlackDeliveryFailed.

    async def start_stream(
        self,
        place: Place,
        *,
        recipient: Recipient,
        markdown_text: str = "",
        chunks: Sequence[dict[str, Any]] = (),
    ) -> str:
        """Open a streamed reply in the thread; return its ts."""
        assert place.thread_ts is not None
        dm = place.channel_id.startswith("D")
        response = await self._live(
            "chat.startStream",
            self._stream_client.chat_startStream(
                channel=place.channel_id,
                thread_ts=place.thread_ts,
                recipient_user_id=None if dm else recipient.user_id,
                recipient_team_id=None if dm else recipient.team_id,
                task_display_mode="timeline",
                chunks=_chunks(markdown_text, chunks),
            ),
            channel=place.channel_id,
        )
        return str(response["ts"])

    async def append_stream(
        self, place: Place, ts: str, *, markdown_text: str = "", chunks: Sequence[dict[str, Any]] = ()
    ) -> None:
        await self._live(
            "chat.appendStream",
            self._stream_client.chat_appendStream(
                channel=place.channel_id, ts=ts, chunks=_chunks(markdown_text, chunks)
            ),
        )

    async def stop_stream(self, place: Place, ts: str) -> None:
        """End a stream; one Slack already closed (or we did, before a crash) is as good."""
        try:
            await self._live(
                "chat.stopStream", self._stream_client.chat_stopStream(channel=place.channel_id, ts=ts)
            )
        except errors.StreamClosed:
            return

    async def post_preview(self, place: Place, markdown_text: str, *, delivery_key: str) -> str:
        """Where Slack won't stream: the answer so far as a message, tagged so a retry finds it."""
        response = await self._live(
            "chat.postMessage",
            self._stream_client.chat_postMessage(
                channel=place.channel_id,
                thread_ts=place.thread_ts,
                markdown_text=markdown_text,
                unfurl_links=False,
                unfurl_media=False,
                metadata={"event_type": REPLY_EVENT_TYPE, "event_payload": {"delivery": delivery_key}},
            ),
            channel=place.channel_id,
        )
        return str(response["ts"])

    async def edit_preview(self, place: Place, ts: str, markdown_text: str) -> None:
        await self._live(
            "chat.update",
            self._stream_client.chat_update(channel=place.channel_id, ts=ts, markdown_text=markdown_text),
        )

    async def _live(self, method: str, call: Awaitable[Any], *, channel: str | None = None) -> Any:
        """A call of a live answer: paced (a new message into `channel` takes its turn), a 429 held
        for every run of the process and raised for the relay to wait, nothing retried here."""
        await _turn(self.pacer, method, channel, call)
        try:
            return await self._timed(method, call)
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            detail = f"{method}: {error}"
            if exc.response.status_code == 429:
                wait = _retry_after(exc.response.headers)
                self.pacer.block(method, wait or 1.0)
                raise errors.SlackRateLimited(detail, retry_after=wait) from None
            if error == STREAM_CLOSED:
                raise errors.StreamClosed(detail) from None
            if method == "chat.startStream" and (error in STREAM_REFUSALS or exc.response.status_code < 500):
                raise errors.StreamRefused(detail) from None
            failure = errors.SlackDeliveryFailed(detail)
            failure.retryable = error not in FINAL_ERRORS
            raise failure from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure = errors.SlackDeliveryFailed(f"{method}: {type(exc).__name__}")
            failure.outcome_unknown = True  # Slack may have done it: no answer came back
            raise failure from None

    async def find_post(self, place: Place, *, delivery_key: str, oldest: str) -> str | None:
        """The ts of an earlier post tagged `delivery_key` (a crash may have hidden its success)."""
        method = "conversations.replies" if place.thread_ts else "conversations.history"
        if place.thread_ts:
            call = self.client.conversations_replies(
                channel=place.channel_id,
                ts=place.thread_ts,
                oldest=oldest,
                include_all_metadata=True,
                limit=200,
            )
        else:
            call = self.client.conversations_history(
                channel=place.channel_id, oldest=oldest, include_all_metadata=True, limit=200
            )
        try:
            response = await self._call(method, call)
        except errors.SlackDeliveryFailed as exc:
            if "thread_not_found" in exc.detail:
                return None  # nothing was posted there
            raise
        for message in response.get("messages") or []:
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            if payload.get("delivery") == delivery_key:
                return str(message["ts"])
        return None

    async def find_untagged_reply(self, place: Place, *, oldest: str) -> str | None:
        """The ts of this app's newest message in the thread after `oldest` that carries no
        delivery tag and no file: a streamed answer whose start never came back (a crash during
        chat.startStream, which takes no metadata, so its message can't be tagged like a post)."""
        if not place.thread_ts:
            return None
        me = (await self.auth_test()).get("user_id")
        call = self.client.conversations_replies(
            channel=place.channel_id, ts=place.thread_ts, oldest=oldest, include_all_metadata=True, limit=200
        )
        try:
            response = await self._call("conversations.replies", call)
        except errors.SlackDeliveryFailed as exc:
            if "thread_not_found" in exc.detail:
                return None
            raise
        for message in reversed(response.get("messages") or []):
            tagged = ((message.get("metadata") or {}).get("event_payload") or {}).get("delivery")
            if (
                me
                and message.get("user") == me
                and not tagged
                and not message.get("files")
                and float(message["ts"]) > float(oldest)
            ):
                return str(message["ts"])
        return None

    async def thread_root_files(self, channel_id: str, thread_ts: str) -> list[dict[str, Any]]:
        """The files shared with a thread's first message ("add this to the library" in its thread)."""
        call = self.client.conversations_replies(channel=channel_id, ts=thread_ts, limit=1)
        try:
            response = await self._call("conversations.replies", call)
        except errors.SlackDeliveryFailed as exc:
            if "thread_not_found" in exc.detail:
                return []
            raise
        for message in response.get("messages") or []:
            if message.get("ts") == thread_ts:
                return [f for f in message.get("files") or [] if isinstance(f, dict)]
        return []

    async def begin_upload(self, *, filename: str, length: int) -> tuple[str, str]:
        """Step 1 of files upload v2: (Slack file id, pre-signed upload URL)."""
        response = await self._call(
            "files.getUploadURLExternal",
            self.client.files_getUploadURLExternal(filename=filename, length=length),
        )
        return str(response["file_id"]), str(response["upload_url"])

    async def send_upload(self, upload_url: str, content: bytes) -> None:
        """Step 2: the raw bytes to the pre-signed URL, which takes no token."""
        async with self._session().post(
            upload_url, data=content, headers={"Content-Type": "application/octet-stream"}
        ) as response:
            if response.status != 200:
                raise errors.SlackDeliveryFailed(f"upload returned HTTP {response.status}")

    async def complete_upload(self, place: Place | None, *, file_id: str, title: str) -> None:
        """Step 3: share the uploaded file into the thread; without a place it stays the app's own
        (for `image` blocks that show it inside a message, not as a message of its own)."""
        if place is None:
            # Nothing is posted, so a retried call cannot show anything twice.
            call = self.client.files_completeUploadExternal(files=[{"id": file_id, "title": title}])
        else:
            call = self._post_client.files_completeUploadExternal(
                files=[{"id": file_id, "title": title}],
                channel_id=place.channel_id,
                thread_ts=place.thread_ts,
            )
        await self._call("files.completeUploadExternal", call)

    async def upload_state(self, file_id: str) -> UploadState:
        """Whether an uploaded file exists yet, and whether Slack has processed it."""
        try:
            response = await self._call("files.info", self.client.files_info(file=file_id))
        except errors.SlackDeliveryFailed as exc:
            if exc.detail.endswith(("file_not_found", "file_deleted")):
                return "missing"
            raise
        return "processed" if _is_processed(response.get("file") or {}) else "processing"

    async def wait_processed(self, file_id: str, *, within: float) -> bool:
        """Wait (with backoff) until Slack has processed an upload: an `image` block naming it is
        refused before that. False when it still isn't after `within` seconds."""
        deadline = time.monotonic() + within
        for pause in PROCESSING_BACKOFF:
            try:
                if await self.upload_state(file_id) == "processed":
                    return True
            except errors.SlackDeliveryFailed as exc:
                log.info("files.info %s while waiting for processing: %s", file_id, exc.detail)
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(pause, left))
        return False

    async def is_shared(self, file_id: str, channel_id: str) -> bool:
        try:
            response = await self._timed("files.info", self.client.files_info(file=file_id))
        except SlackApiError:
            return False
        shares = (response.get("file") or {}).get("shares") or {}
        return any(channel_id in (shares.get(kind) or {}) for kind in ("public", "private"))

    async def file_info(self, file_id: str, *, name: str) -> SlackFile:
        """The full file object; retried briefly while Slack is still processing the upload."""
        for pause in (*FILE_INFO_BACKOFF, None):
            try:
                response = await self._timed("files.info", self.client.files_info(file=file_id))
            except SlackApiError as exc:
                log.info("files.info %s: %s", file_id, exc.response.get("error"))
                raise errors.FileDownloadFailed(
                    f"files.info: {exc.response.get('error')}", name=name
                ) from None
            file: dict[str, Any] = response.get("file") or {}
            url = file.get("url_private_download") or file.get("url_private")
            if url:
                return SlackFile(id=file_id, download_url=str(url), meta=file)
            if pause is not None:
                await asyncio.sleep(pause)
        raise errors.FileDownloadFailed("files.info never returned a download URL", name=name)

    async def download(self, url: str, dest: IO[bytes], *, name: str, max_bytes: int) -> int:
        """Stream a private file into `dest` in chunks; return its size.

        Redirects are followed by hand, and only to Slack's file host or the API host, so the
        token cannot leak. A 200 text/html answer is Slack's sign-in page, not the file. At
        most `max_bytes` + 1 bytes are read: one more than that is FileTooLarge.
        """
        http = self._session()
        for _ in range(MAX_REDIRECTS + 1):
            if origin(url) not in self.file_origins:
                log.warning("refused to download %s from %s: not a Slack file host", name, origin(url))
                raise errors.FileDownloadFailed(f"host {origin(url)} is not a Slack file host", name=name)
            headers = {"Authorization": f"Bearer {self.client.token}"}
            async with http.get(url, headers=headers, allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status != 200:
                    raise errors.FileDownloadFailed(f"download answered HTTP {response.status}", name=name)
                if response.content_type == "text/html":
                    raise errors.FileDownloadFailed("Slack answered with a web page, not the file", name=name)
                too_large = errors.FileTooLarge(
                    f"more than {max_bytes} bytes", name=name, limit_mb=max_bytes // (1 << 20)
                )
                if (response.content_length or 0) > max_bytes:
                    raise too_large
                size = 0
                while chunk := await response.content.read(min(DOWNLOAD_CHUNK, max_bytes + 1 - size)):
                    size += len(chunk)
                    if size > max_bytes:
                        raise too_large
                    dest.write(chunk)
                return size
        raise errors.FileDownloadFailed("too many redirects", name=name)

    async def show_status(self, place: Place, status: str, *, message_ts: str) -> None:
        """A visible sign of work: thread status where there is a thread, else a reaction."""
        method = "assistant.threads.setStatus" if place.thread_ts else "reactions"
        try:
            with self._metrics.timing(method, _error_name):
                async with asyncio.timeout(COSMETIC_TIMEOUT):
                    await self._show_status(place, status, message_ts=message_ts)
        except SlackApiError as exc:
            # Cosmetic: never let it fail a run.
            log.info("status not shown in %s: %s", place.channel_id, exc.response.get("error"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("status not shown in %s: %s", place.channel_id, type(exc).__name__)

    async def _show_status(self, place: Place, status: str, *, message_ts: str) -> None:
        if place.thread_ts:
            await self.client.assistant_threads_setStatus(
                channel_id=place.channel_id,
                thread_ts=place.thread_ts,
                status=status,
                loading_messages=list(LOADING_MESSAGES) if status else None,
            )
        elif status:
            await self.client.reactions_add(channel=place.channel_id, timestamp=message_ts, name="eyes")
        else:
            await self.client.reactions_remove(channel=place.channel_id, timestamp=message_ts, name="eyes")

    async def set_suggested_prompts(
        self, channel_id: str, prompts: Sequence[tuple[str, str]], *, thread_ts: str | None = None
    ) -> None:
        """Agent view: no thread_ts (with one the call silently fails); assistant view: the pane's thread."""
        await self._cosmetic(
            "assistant.threads.setSuggestedPrompts",
            self.client.assistant_threads_setSuggestedPrompts(
                channel_id=channel_id,
                thread_ts=thread_ts,
                prompts=[{"title": title, "message": message} for title, message in prompts],
            ),
        )

    async def set_title(self, channel_id: str, thread_ts: str, title: str) -> None:
        await self._cosmetic(
            "assistant.threads.setTitle",
            self.client.assistant_threads_setTitle(
                channel_id=channel_id, thread_ts=thread_ts, title=title[:80]
            ),
        )

    async def publish_home(self, user_id: str, view: dict[str, Any]) -> None:
        await self._cosmetic("views.publish", self.client.views_publish(user_id=user_id, view=view))

    async def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        """A modal for the click that carried `trigger_id` (Slack accepts it for 3 s)."""
        await self._cosmetic("views.open", self.client.views_open(trigger_id=trigger_id, view=view))

    async def permalink(self, channel_id: str, message_ts: str) -> str | None:
        try:
            response = await self._timed(
                "chat.getPermalink", self.client.chat_getPermalink(channel=channel_id, message_ts=message_ts)
            )
        except SlackApiError:
            return None
        return str(response.get("permalink") or "") or None

    async def _cosmetic(self, method: str, call: Any) -> None:
        """Calls whose failure must not fail anything else: logged, not raised."""
        try:
            with self._metrics.timing(method, _error_name):
                async with asyncio.timeout(COSMETIC_TIMEOUT):
                    await call
        except SlackApiError as exc:
            log.info("%s failed: %s", method, exc.response.get("error"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("%s failed: %s", method, type(exc).__name__)

    async def display_name(self, user_id: str) -> str:
        cached = self._names.get(user_id)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        user = await self._user(user_id)
        if user is None:
            return ""
        profile: dict[str, Any] = user.get("profile") or {}
        name = str(
            profile.get("display_name")
            or profile.get("real_name")
            or user.get("real_name")
            or user.get("name")
            or ""
        )
        self._names[user_id] = (name, time.monotonic() + DISPLAY_NAME_TTL)
        return name

    async def is_admin(self, user_id: str) -> bool:
        """users.info → is_admin (owners are admins too), cached briefly: a demoted admin loses it
        within ADMIN_TTL. False when Slack can't say."""
        cached = self._admins.get(user_id)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        user = await self._user(user_id)
        return user is not None and self._admins[user_id][0]

    async def _user(self, user_id: str) -> dict[str, Any] | None:
        try:
            with self._metrics.timing("users.info", _error_name):
                async with asyncio.timeout(COSMETIC_TIMEOUT):
                    response = await self.client.users_info(user=user_id)
        except SlackApiError as exc:
            log.info("users.info %s failed: %s", user_id, exc.response.get("error"))
            return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("users.info %s failed: %s", user_id, type(exc).__name__)
            return None
        user: dict[str, Any] = response.get("user") or {}
        admin = bool(user.get("is_admin") or user.get("is_owner"))
        self._admins[user_id] = (admin, time.monotonic() + ADMIN_TTL)
        return user

    async def auth_test(self) -> dict[str, Any]:
        response = await self._call("auth.test", self.client.auth_test())
        return dict(response.data) if isinstance(response.data, dict) else {}

    async def open_socket_connection(self, app_token: str) -> str:
        """apps.connections.open with the app-level token: the WebSocket URL for Socket Mode."""
        response = await self._call(
            "apps.connections.open", self.client.apps_connections_open(app_token=app_token)
        )
        return str(response["url"])

    def _session(self) -> aiohttp.ClientSession:
        session = self.connections.session(TRANSFER_TIMEOUT)
        if session is None:
            raise errors.SlackDeliveryFailed("the Slack connections of this gateway are closed")
        return session

    async def _timed(self, method: str, call: Awaitable[Any]) -> Any:
        with self._metrics.timing(method, _error_name):
            return await call

    async def _call(self, method: str, call: Awaitable[Any]) -> Any:
        """A Web API call whose failure is the caller's: SDK errors become SlackDeliveryFailed."""
        await _turn(self.pacer, method, None, call)  # another run's 429 on this method holds it
        try:
            return await self._timed(method, call)
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            log.warning("%s failed: %s", method, error)
            failure = errors.SlackDeliveryFailed(f"{method}: {error}")
            if error in FINAL_ERRORS:
                failure.retryable = False
            raise failure from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s failed: %s", method, type(exc).__name__)
            failure = errors.SlackDeliveryFailed(f"{method}: {type(exc).__name__}")
            failure.outcome_unknown = True
            raise failure from None


async def _turn(pacer: Pacer, method: str, channel: str | None, call: Awaitable[Any]) -> None:
    """Wait for Slack's pace before `call` is sent; a call that never goes is closed, not leaked."""
    try:
        await pacer.wait_turn(method, channel)
    except BaseException:
        if inspect.iscoroutine(call):
            call.close()
        raise


def _pacer_of(client: AsyncWebClient) -> Pacer | None:
    """The Pacer behind a client made by make_web_client, so Bolt's calls and ours share one."""
    for handler in client.retry_handlers:
        if isinstance(handler, SharedRateLimitHandler):
            return handler.pacer
    return None


def _chunks(markdown_text: str, chunks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [{"type": "markdown_text", "text": markdown_text}] if markdown_text else []
    return [*out, *chunks]


def _retry_after(headers: Any) -> float:
    values: Any = (headers.get("Retry-After") or headers.get("retry-after")) if headers else None
    value: Any = values[0] if isinstance(values, list) and values else values
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 1.0


def _is_processed(file: dict[str, Any]) -> bool:
    """Slack fills in the type, and for images the size and thumbnails, once it has processed a
    file; right after files.completeUploadExternal `mimetype` and `filetype` are still empty."""
    if not file.get("mimetype") or not file.get("filetype"):
        return False
    if not str(file["mimetype"]).startswith("image/"):
        return True
    return "original_w" in file or any(key.startswith("thumb_") for key in file)


def _error_name(exc: Exception) -> str:
    """A metric label for a failed call: Slack's error code, or the exception (timeout, connection)."""
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error") or exc.response.status_code)[:40]
    return type(exc).__name__
