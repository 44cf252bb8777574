"""A fake Slack Web API + file host, driven by the real ``slack_sdk`` AsyncWebClient.

Point the client at ``fake.api_url`` (``AsyncWebClient(token=..., base_url=fake.api_url)``).
Web API methods are answered under ``/api/<method>``; files are served under ``/files-pri/``;
uploads go to ``/upload/v1/<file_id>``; slash-command replies to ``/response_url/<anything>``.

Streams (``chat.startStream`` / ``appendStream`` / ``stopStream``) follow Slack's rules: a thread
is required, and outside DMs so are ``recipient_user_id`` and ``recipient_team_id``; one streamed
message holds at most ``STREAM_TEXT_LIMIT`` characters of markdown (``msg_too_long``); appending to
or stopping a stream that was stopped, or that is older than ``fake.stream_expiry`` seconds, answers
``message_not_in_streaming_state``; appends to one message closer together than
``fake.append_interval`` seconds answer HTTP 429 ``ratelimited`` with ``Retry-After``.
``fake.refuse_streams = "channel_type_not_supported"`` refuses every startStream with that error.

Many workspaces (distribution mode): ``fake.authorization_code(team_id)`` is the ``code`` Slack
would send an installer back with; ``oauth.v2.access`` exchanges it (client id and secret checked)
for that workspace's own bot token, bot user and bot id, and with ``rotation=True`` a refresh
token too (``grant_type=refresh_token`` then gives new tokens and retires the old ones).
``auth.test`` answers for whichever workspace the token belongs to. A channel given to
``fake.channel_teams`` belongs to that team: any other workspace's token gets
``channel_not_found`` there, and a file hosted with ``team_id=`` downloads only with that team's
token. The default token (``fake.bot_token``, team ``fake.team_id``) works as it always did.
Blocks (chat.postMessage, chat.update, chat.stopStream, modals) are checked as Slack documents
them, answering ``invalid_blocks`` with the problems: 50 blocks, section text, image blocks,
``context_actions`` (1 to 5 ``feedback_buttons`` / ``icon_button`` elements, feedback buttons
nowhere else) and ``input`` blocks. ``views.open`` needs a trigger_id and a valid modal; the
modals opened are in ``opened_views``.

Selectors for ``calls()``, ``fail_next()`` and ``delay_next()``: a Web API method name
(``"chat.postMessage"``, exact match) or, for the other routes, a path prefix starting with
``/`` (``"/upload/v1/"``, ``"/files-pri/"``, ``"/response_url/"``).
"""

from __future__ import annotations

import base64
import copy
import json
import math
import mimetypes
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ._recording import FakeServer, RecordedRequest, decode_json_string, recorded

#: Form/query arguments that slack_sdk JSON-encodes into strings.
_JSON_STRING_KEYS = frozenset(
    {
        "attachments",
        "blocks",
        "chunks",
        "files",
        "loading_messages",
        "metadata",
        "prompts",
        "unfurls",
        "view",
    }
)

_SIGN_IN_PAGE = (
    '<!DOCTYPE html><html lang="en-US"><head><meta charset="utf-8">'
    "<title>Slack</title></head><body><h1>Sign in to Slack</h1>"
    "<p>Continue with the email address you use to sign in.</p></body></html>"
)

_CHUNK_SIZE = 64 * 1024
#: Characters of markdown one streamed message may hold (chat.startStream docs: 12,000).
STREAM_TEXT_LIMIT = 12_000

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class SharedUpload:
    """A file that went through files.getUploadURLExternal → upload → completeUploadExternal."""

    file_id: str
    filename: str
    title: str | None
    content: bytes
    channel_id: str | None
    thread_ts: str | None
    initial_comment: str | None


@dataclass
class _PendingUpload:
    file_id: str
    filename: str
    length: int | None
    content: bytes | None = None


@dataclass
class _HostedFile:
    info: dict[str, Any]
    content: bytes
    shared_at: float | None = None
    shares: dict[str, Any] = field(default_factory=dict)
    #: When files.completeUploadExternal finished the app's upload (None: a file a user shared).
    uploaded_at: float | None = None


#: What files.info leaves empty until Slack has processed an upload.
_UNPROCESSED_BLANK = ("mimetype", "filetype", "pretty_type")


#: Elements a context_actions block may hold, and how many (Block Kit reference).
_CONTEXT_ACTION_ELEMENTS = ("feedback_buttons", "icon_button")
_CONTEXT_ACTIONS_MAX = 5


def _plain_text_problem(text: Any, limit: int) -> str | None:
    """What is wrong with a plain_text object of at most `limit` characters, or None."""
    if not isinstance(text, dict) or text.get("type") != "plain_text":
        return "must be a plain_text object"
    if not isinstance(text.get("text"), str) or not 1 <= len(text["text"]) <= limit:
        return f"text must be 1 to {limit} characters"
    return None


def _context_actions_problems(block: dict[str, Any], where: str) -> list[str]:
    """A context_actions block: 1 to 5 feedback_buttons / icon_button elements; feedback buttons
    nowhere else. Each feedback button: plain_text (≤ 75), a value (≤ 2000), an optional
    accessibility_label (≤ 75)."""
    elements = block.get("elements")
    if block.get("type") != "context_actions":
        if isinstance(elements, list) and any(
            isinstance(e, dict) and e.get("type") in _CONTEXT_ACTION_ELEMENTS for e in elements
        ):
            return [f"feedback_buttons and icon_button belong in a context_actions block {where}/type]"]
        return []
    if not isinstance(elements, list) or not elements:
        return [f"must contain at least 1 item {where}/elements]"]
    problems = []
    if len(elements) > _CONTEXT_ACTIONS_MAX:
        problems.append(f"must contain at most {_CONTEXT_ACTIONS_MAX} items {where}/elements]")
    if len(str(block.get("block_id") or "")) > 255:
        problems.append(f"must be at most 255 characters {where}/block_id]")
    for number, element in enumerate(elements):
        at = f"{where}/elements/{number}"
        if not isinstance(element, dict) or element.get("type") not in _CONTEXT_ACTION_ELEMENTS:
            problems.append(f"must be feedback_buttons or icon_button {at}/type]")
            continue
        if len(str(element.get("action_id") or "")) > 255:
            problems.append(f"must be at most 255 characters {at}/action_id]")
        if element["type"] == "icon_button":
            if not element.get("icon") or _plain_text_problem(element.get("text"), 75):
                problems.append(f"an icon_button needs an icon and plain_text {at}]")
            continue
        for side in ("positive_button", "negative_button"):
            problems += _feedback_button_problems(element.get(side), f"{at}/{side}")
    return problems


def _feedback_button_problems(button: Any, at: str) -> list[str]:
    if not isinstance(button, dict):
        return [f"must provide an object {at}]"]
    problems = []
    if text_problem := _plain_text_problem(button.get("text"), 75):
        problems.append(f"{text_problem} (plain_text, 1 to 75 characters) {at}/text]")
    value = button.get("value")
    if not isinstance(value, str) or not 1 <= len(value) <= 2000:
        problems.append(f"value must be 1 to 2000 characters {at}/value]")
    label = button.get("accessibility_label")
    if label is not None and (not isinstance(label, str) or not 1 <= len(label) <= 75):
        problems.append(f"accessibility_label must be 1 to 75 characters {at}/accessibility_label]")
    return problems


def _input_problems(block: dict[str, Any], where: str) -> list[str]:
    """An input block: a plain_text label (≤ 2000) and an element; a text input's max_length ≤ 3000."""
    if block.get("type") != "input":
        return []
    problems = []
    if text_problem := _plain_text_problem(block.get("label"), 2000):
        problems.append(f"{text_problem} {where}/label]")
    element = block.get("element")
    if not isinstance(element, dict) or not element.get("type"):
        problems.append(f"must provide an element {where}/element]")
    elif element.get("type") == "plain_text_input" and int(element.get("max_length") or 0) > 3000:
        problems.append(f"must be at most 3000 {where}/element/max_length]")
    return problems


def _png_size(content: bytes) -> tuple[int, int] | None:
    if content[:8] != b"\x89PNG\r\n\x1a\n" or len(content) < 24:
        return None
    width, height = struct.unpack(">II", content[16:24])
    return int(width), int(height)


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _ts_key(ts: str) -> tuple[int, int]:
    sec, _, frac = ts.partition(".")
    return int(sec or 0), int((frac or "0").ljust(6, "0")[:6])


def _ts_micros(ts: str) -> int:
    sec, micro = _ts_key(ts)
    return sec * 1_000_000 + micro


def _guess_filetype(name: str) -> str:
    _, dot, ext = name.rpartition(".")
    return ext.lower() if dot and ext else "binary"


@dataclass
class FakeWorkspace:
    """A workspace that installs the app through OAuth (distribution mode)."""

    team_id: str
    team_name: str
    bot_user_id: str
    bot_id: str
    rotation: bool = False
    bot_token: str | None = None
    refresh_token: str | None = None
    #: Tokens issued so far (each install or refresh makes new ones).
    issued: int = 0


class FakeSlack(FakeServer):
    """Fake Slack Web API. See the module docstring for selectors and routes."""

    def __init__(
        self,
        bot_token: str = "xoxb-test-token",  # noqa: S107 - a fake credential
        bot_user_id: str = "U0TUTORBOT",
        bot_id: str = "B0TUTOR",
        team_id: str = "T0001",
    ) -> None:
        super().__init__()
        self.bot_token = bot_token
        self.app_token = "xapp-test-token"
        #: Open Socket Mode connections, and the acks the app sent over them.
        self.sockets: list[web.WebSocketResponse] = []
        self.socket_acks: list[dict[str, Any]] = []
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.team_id = team_id
        self.app_id = "A0TUTOR"
        self.team_name = "Example"
        self.team_domain = "example"
        #: user id -> user object for users.info; unknown ids get a default "Alice" profile
        #: unless ``strict_users`` is True (then ``user_not_found``).
        self.users: dict[str, dict[str, Any]] = {}
        self.strict_users = False
        #: Users whose default users.info profile says ``is_admin: true`` (workspace admins).
        self.admins: set[str] = set()
        #: channel id -> channel object override for conversations.info.
        self.channels: dict[str, dict[str, Any]] = {}
        #: Seconds after files.completeUploadExternal before files.info shows ``shares``
        #: (Slack shares asynchronously).
        self.share_delay = 0.0
        #: Seconds after files.completeUploadExternal before the upload is processed: until then
        #: files.info shows no type (nor, for images, size and thumbnails) and an ``image`` block
        #: naming it is refused with ``invalid_blocks``, as Slack does.
        self.process_delay = 0.0
        #: Slack's posting limit, when set: ``(burst, rate)``, a token bucket per channel ("about one
        #: message per second, short bursts allowed"); a chat.postMessage finding it empty gets 429
        #: with Retry-After in whole seconds, as Slack's.
        self.channel_limit: tuple[int, float] | None = None
        #: chat.postMessage and chat.startStream calls (each a new message) refused by ``channel_limit``.
        self.rate_limited = 0
        self._channel_buckets: dict[str, tuple[float, float]] = {}
        #: All stored messages (bot posts, seeded human messages, upload shares) by channel.
        self.channel_messages: dict[str, list[dict[str, Any]]] = {}
        self.deleted_messages: list[dict[str, Any]] = []
        self.ephemeral_messages: list[dict[str, Any]] = []
        #: Modals opened with views.open: ``{"trigger_id": …, "view": …}`` in order.
        self.opened_views: list[dict[str, Any]] = []
        #: (channel, ts) -> reaction name -> list of user ids.
        self.reactions: dict[tuple[str, str], dict[str, list[str]]] = {}
        #: JSON bodies POSTed to /response_url/<name>, with the name under ``"_path"``.
        self.responded: list[dict[str, Any]] = []
        self.hosted_files: dict[str, _HostedFile] = {}
        self._pending_uploads: dict[str, _PendingUpload] = {}
        self._uploads: list[SharedUpload] = []
        #: Seconds after chat.startStream before Slack closes the stream (real Slack: ~5 minutes).
        self.stream_expiry = 300.0
        #: Minimum seconds between appends to one stream (0: no limit); closer ones get a 429.
        self.append_interval = 0.0
        #: An error every chat.startStream answers (e.g. "channel_type_not_supported").
        self.refuse_streams: str | None = None
        self._last_ts = 1_760_000_000_000_000
        self._file_counter = 0
        #: The app's OAuth credentials (oauth.v2.access refuses others).
        self.client_id = "1111.2222"
        self.client_secret = "fake-client-secret"
        #: Seconds a rotating token lives (``expires_in``); Slack's are 12 hours.
        self.token_lifetime = 43_200
        #: Workspaces installed through oauth.v2.access, by team id.
        self.workspaces: dict[str, FakeWorkspace] = {}
        self._codes: dict[str, FakeWorkspace] = {}
        #: channel id -> the team it belongs to (channels not listed belong to every team).
        self.channel_teams: dict[str, str] = {}
        self._methods: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.startStream": self._chat_start_stream,
            "chat.appendStream": self._chat_append_stream,
            "chat.stopStream": self._chat_stop_stream,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.replies": self._conversations_replies,
            "conversations.info": self._conversations_info,
            "users.info": self._users_info,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
            "views.publish": self._views_publish,
            "views.open": self._views_open,
            "files.info": self._files_info,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
        }

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return self.origin

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:PORT/api/``: what SLACK_API_URL / AsyncWebClient(base_url=) gets."""
        return f"{self.origin}/api/"

    def response_url(self, name: str = "cmd") -> str:
        """A response_url to put into a slash-command payload; POSTs land in ``responded``."""
        return f"{self.origin}/response_url/{name}"

    def _request_name(self, method: str, path: str) -> str:
        if path.startswith("/api/"):
            return path[len("/api/") :]
        return path

    def _matches(self, selector: str, rec: RecordedRequest) -> bool:
        if selector.startswith("/"):
            return rec.path.startswith(selector)
        return rec.name == selector

    def _json_string_keys(self, rec: RecordedRequest) -> frozenset[str]:
        return _JSON_STRING_KEYS if rec.path.startswith("/api/") else frozenset()

    def next_ts(self) -> str:
        """A fresh message ts, strictly greater than every ts seen so far."""
        self._last_ts += 100
        return f"{self._last_ts // 1_000_000}.{self._last_ts % 1_000_000:06d}"

    def _observe_ts(self, ts: str) -> None:
        self._last_ts = max(self._last_ts, _ts_micros(ts))

    def add_message(
        self,
        channel: str,
        ts: str,
        text: str,
        user: str,
        thread_ts: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Seed a (human) message, e.g. the thread root a conversations.replies call reads."""
        message: dict[str, Any] = {"type": "message", "user": user, "text": text, "ts": ts}
        if thread_ts is not None:
            message["thread_ts"] = thread_ts
        message.update(extra)
        message["channel"] = channel
        self._store(channel, message)
        self._observe_ts(ts)
        return message

    def all_messages(self, channel: str, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """Every stored message in ``channel`` (optionally one thread, root included), ts order."""
        found = self.channel_messages.get(channel, [])
        if thread_ts is not None:
            found = [m for m in found if m["ts"] == thread_ts or m.get("thread_ts") == thread_ts]
        return sorted(found, key=lambda m: _ts_key(m["ts"]))

    def messages(
        self, channel: str, thread_ts: str | None = None, *, include_uploads: bool = False, live: bool = False
    ) -> list[dict[str, Any]]:
        """Messages the bot posted (ts order), optionally one thread only, as they have settled.

        File-share messages created by files.completeUploadExternal are left out unless
        ``include_uploads`` is True. Live answers still growing (a stream, or a ``markdown_text``
        preview not yet rewritten with ``text``) are left out unless ``live`` is True.
        """
        return [
            m
            for m in self.all_messages(channel, thread_ts)
            if m.get("user") == self.bot_user_id
            and (include_uploads or not m.get("upload"))
            and (live or not m.get("live"))
        ]

    @property
    def uploads(self) -> list[SharedUpload]:
        """Completed (files.completeUploadExternal) uploads, one entry per file and channel."""
        return list(self._uploads)

    def reactions_on(self, channel: str, ts: str) -> list[str]:
        """Reaction names currently on a message."""
        return [name for name, users in self.reactions.get((channel, ts), {}).items() if users]

    def new_file_id(self) -> str:
        self._file_counter += 1
        return f"F0FAKE{self._file_counter:05d}"

    def host_file(
        self,
        name: str,
        content: bytes,
        mimetype: str,
        *,
        file_id: str | None = None,
        filetype: str | None = None,
        user: str = "U0ALICE",
        title: str | None = None,
        team_id: str | None = None,
    ) -> dict[str, Any]:
        """Serve ``content`` like a file shared in Slack and return its Slack file object.

        Download URL: ``{base_url}/files-pri/{team_id}-{id}/download/{name}`` (bearer required).
        """
        fid = file_id or self.new_file_id()
        team = team_id or self.team_id
        now = int(time.time())
        ftype = filetype or _guess_filetype(name)
        info: dict[str, Any] = {
            "id": fid,
            "created": now,
            "timestamp": now,
            "name": name,
            "title": title if title is not None else name,
            "mimetype": mimetype,
            "filetype": ftype,
            "pretty_type": ftype.upper(),
            "user": user,
            "user_team": team,
            "editable": False,
            "size": len(content),
            "mode": "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": True,
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": f"{self.origin}/files-pri/{team}-{fid}/{name}",
            "url_private_download": (f"{self.origin}/files-pri/{team}-{fid}/download/{name}"),
            "permalink": f"https://{self.team_domain}.slack.com/files/{user}/{fid}/{name}",
            "permalink_public": f"https://slack-files.com/{team}-{fid}-0000000000",
            "file_access": "visible",
            "shares": {},
            "channels": [],
            "groups": [],
            "ims": [],
            "has_rich_preview": False,
        }
        self.hosted_files[fid] = _HostedFile(info=info, content=content)
        return copy.deepcopy(info)

    def file_info(self, file_id: str) -> dict[str, Any] | None:
        """The current files.info object for ``file_id`` (None if unknown)."""
        hosted = self.hosted_files.get(file_id)
        if hosted is None:
            return None
        info = copy.deepcopy(hosted.info)
        if not self.is_processed(file_id):
            info.update(dict.fromkeys(_UNPROCESSED_BLANK, ""))
        elif hosted.uploaded_at is not None and (size := _png_size(hosted.content)):
            base = f"{self.origin}/files-tmb/{self.team_id}-{file_id}"
            info.update({"original_w": size[0], "original_h": size[1], "thumb_360": f"{base}/360.png"})
        visible = hosted.shared_at is not None and time.monotonic() - hosted.shared_at >= self.share_delay
        if visible:
            info["shares"] = copy.deepcopy(hosted.shares)
            for kind, channels in hosted.shares.items():
                key = "channels" if kind == "public" else "groups"
                info[key] = sorted(set(info[key]) | set(channels))
        return info

    def is_processed(self, file_id: str) -> bool:
        """Whether an ``image`` block may show the file: known, and past ``process_delay``."""
        hosted = self.hosted_files.get(file_id)
        if hosted is None:
            return False
        return hosted.uploaded_at is None or time.monotonic() - hosted.uploaded_at >= self.process_delay

    def _invalid_blocks(self, blocks: Any) -> list[str]:
        """Slack's checks of the blocks the tutor sends (count, section text, image blocks, context
        actions and feedback buttons, inputs)."""
        if not isinstance(blocks, list):
            return ["must be an array [json-pointer:/blocks]"]
        problems = ["must contain at most 50 items [json-pointer:/blocks]"] if len(blocks) > 50 else []
        for index, block in enumerate(blocks):
            where = f"[json-pointer:/blocks/{index}"
            if not isinstance(block, dict):
                problems.append(f"must be an object {where}]")
                continue
            problems += _context_actions_problems(block, where)
            problems += _input_problems(block, where)
            if block.get("type") == "section" and len((block.get("text") or {}).get("text") or "") > 3000:
                problems.append(f"must be less than 3001 characters {where}/text/text]")
            if block.get("type") != "image":
                continue
            if len(str(block.get("alt_text") or "")) > 2000 or not block.get("alt_text"):
                problems.append(f"alt_text must be 1 to 2000 characters {where}/alt_text]")
            slack_file = block.get("slack_file")
            if slack_file is not None and not self.is_processed(str(slack_file.get("id") or "")):
                problems.append(f"invalid slack file {where}/slack_file]")
        return problems

    def _invalid_view(self, view: Any) -> list[str]:
        """Slack's checks of a modal (views.open): type, title, buttons, blocks, private_metadata."""
        if not isinstance(view, dict) or view.get("type") != "modal":
            return ["must be a modal view [json-pointer:/view/type]"]
        problems = []
        for name, limit in (("title", 24), ("submit", 24), ("close", 24)):
            text = view.get(name)
            if text is None and name != "title":
                continue
            if _plain_text_problem(text, limit):
                problems.append(f"{_plain_text_problem(text, limit)} [json-pointer:/view/{name}]")
        if len(str(view.get("private_metadata") or "")) > 3000:
            problems.append("must be at most 3000 characters [json-pointer:/view/private_metadata]")
        has_input = any(isinstance(b, dict) and b.get("type") == "input" for b in view.get("blocks") or [])
        if has_input and view.get("submit") is None:
            problems.append("a view with inputs needs a submit button [json-pointer:/view/submit]")
        problems += [p.replace("/blocks", "/view/blocks") for p in self._invalid_blocks(view.get("blocks"))]
        return problems

    def _build_app(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/v1/{file_id}", self._upload)
        app.router.add_get("/files-pri/{team_file}/download/{name}", self._download)
        app.router.add_get("/files-pri/{team_file}/{name}", self._download)
        app.router.add_post("/response_url/{name:.*}", self._response_url)
        app.router.add_get("/socket", self._socket)

    # -- Socket Mode: apps.connections.open with the app token, then a WebSocket ----------------

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": len(self.sockets), "debug_info": {}})
        async for msg in ws:
            if msg.type == web.WSMsgType.TEXT:
                self.socket_acks.append(json.loads(msg.data))
        self.sockets.remove(ws)
        return ws

    async def socket_send(self, envelope: dict[str, Any]) -> None:
        """Deliver a Socket Mode envelope (events_api, slash_commands, interactive) to the app."""
        await self.sockets[0].send_json(envelope)

    # -- Many workspaces: OAuth installs, per-workspace tokens and channels -------------------

    def authorization_code(
        self, team_id: str, *, team_name: str | None = None, rotation: bool = False
    ) -> str:
        """The ``code`` Slack sends an installer of ``team_id`` back to the redirect URL with."""
        suffix = team_id.removeprefix("T")
        workspace = FakeWorkspace(
            team_id=team_id,
            team_name=team_name or f"Team {suffix}",
            bot_user_id=f"U0BOT{suffix}",
            bot_id=f"B0BOT{suffix}",
            rotation=rotation,
        )
        code = f"code-{team_id}-{len(self._codes)}"
        self._codes[code] = workspace
        return code

    def uninstall(self, team_id: str) -> None:
        """The workspace removed the app: its tokens stop working."""
        self.workspaces.pop(team_id, None)

    def workspace_of(self, token: str | None) -> FakeWorkspace | None:
        """The installed workspace a (current) token belongs to."""
        return next((w for w in self.workspaces.values() if token and w.bot_token == token), None)

    def _issue(self, workspace: FakeWorkspace) -> dict[str, Any]:
        workspace.issued += 1
        n, team = workspace.issued, workspace.team_id
        tokens: dict[str, Any] = {"token_type": "bot", "scope": "chat:write,commands"}
        if workspace.rotation:
            workspace.bot_token = f"xoxe.xoxb-1-{team}-{n}"
            workspace.refresh_token = f"xoxe-1-{team}-refresh-{n}"
            tokens |= {"refresh_token": workspace.refresh_token, "expires_in": self.token_lifetime}
        else:
            workspace.bot_token = f"xoxb-{team}-{n}"
        self.workspaces[team] = workspace
        return tokens | {"access_token": workspace.bot_token}

    def _oauth_v2_access(self, rec: RecordedRequest) -> dict[str, Any]:
        auth = rec.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        else:
            client_id, secret = str(rec.args.get("client_id") or ""), str(rec.args.get("client_secret") or "")
        if client_id != self.client_id:
            return {"ok": False, "error": "invalid_client_id"}
        if secret != self.client_secret:
            return {"ok": False, "error": "bad_client_secret"}
        if rec.args.get("grant_type") == "refresh_token":
            refresh = rec.args.get("refresh_token")
            workspace = next(
                (w for w in self.workspaces.values() if refresh and w.refresh_token == refresh), None
            )
            if workspace is None:
                return {"ok": False, "error": "invalid_refresh_token"}
        else:
            workspace = self._codes.pop(str(rec.args.get("code") or ""), None)
            if workspace is None:
                return {"ok": False, "error": "invalid_code"}
        return {
            "ok": True,
            "app_id": self.app_id,
            "authed_user": {"id": "U0INSTALLER"},
            "bot_user_id": workspace.bot_user_id,
            "team": {"id": workspace.team_id, "name": workspace.team_name},
            "enterprise": None,
            "is_enterprise_install": False,
            **self._issue(workspace),
        }

    def _workspace_auth_test(self, workspace: FakeWorkspace) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{workspace.team_id.lower()}.slack.com/",
            "team": workspace.team_name,
            "user": "tutor",
            "team_id": workspace.team_id,
            "user_id": workspace.bot_user_id,
            "bot_id": workspace.bot_id,
            "is_enterprise_install": False,
        }

    def _team_of_token(self, token: str | None) -> str | None:
        """The team a token speaks for; None when it is no (current) bot token."""
        if token == self.bot_token:
            return self.team_id
        workspace = self.workspace_of(token)
        return workspace.team_id if workspace else None

    async def _api(self, request: web.Request) -> web.StreamResponse:
        rec = recorded(request)
        method = request.match_info["method"]
        args = rec.args
        token = rec.bearer or args.get("token")
        if method == "apps.connections.open" and token == self.app_token:
            return web.json_response({"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket"})
        if method == "oauth.v2.access":
            return web.json_response(self._oauth_v2_access(rec))
        team = self._team_of_token(token)
        if team is None:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        workspace = self.workspace_of(token)
        if method == "auth.test" and workspace is not None:
            return web.json_response(self._workspace_auth_test(workspace))
        channel = args.get("channel") or args.get("channel_id")
        if channel and self.channel_teams.get(str(channel), team) != team:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        new_message = method in ("chat.postMessage", "chat.startStream")
        if new_message and (retry_after := self._over_channel_limit(args)) is not None:
            self.rate_limited += 1
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(retry_after)}
            )
        handler = self._methods.get(method)
        if handler is None:
            # assistant.threads.*, and anything else: recorded, answered ok.
            return web.json_response({"ok": True})
        result = await handler(args)
        if result.get("error") == "ratelimited":
            retry_after = str(result.pop("retry_after", 1))
            return web.json_response(result, status=429, headers={"Retry-After": retry_after})
        return web.json_response(result)

    def _over_channel_limit(self, args: dict[str, Any]) -> int | None:
        """Retry-After seconds if ``channel_limit`` refuses this post; else the post takes a token."""
        if self.channel_limit is None:
            return None
        burst, rate = self.channel_limit
        channel, now = str(args.get("channel")), time.monotonic()
        tokens, at = self._channel_buckets.get(channel, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._channel_buckets[channel] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / rate))
        self._channel_buckets[channel] = (tokens - 1.0, now)
        return None

    def _store(self, channel: str, message: dict[str, Any]) -> None:
        self.channel_messages.setdefault(channel, []).append(message)

    def _find(self, channel: str, ts: str) -> dict[str, Any] | None:
        for message in self.channel_messages.get(channel, []):
            if message["ts"] == ts:
                return message
        return None

    async def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team_name,
            "user": "tutor",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _message_fields(self, args: dict[str, Any]) -> dict[str, Any] | str:
        text = args.get("text")
        blocks = args.get("blocks")
        markdown_text = args.get("markdown_text")
        if markdown_text is not None and (text is not None or blocks is not None):
            return "markdown_text_conflict"
        if not text and not blocks and not markdown_text and not args.get("attachments"):
            return "no_text"
        fields: dict[str, Any] = {"text": text if text is not None else (markdown_text or "")}
        if blocks is not None:
            fields["blocks"] = blocks
        if markdown_text is not None:
            fields["markdown_text"] = markdown_text
        if args.get("attachments") is not None:
            fields["attachments"] = args["attachments"]
        if args.get("metadata") is not None:
            fields["metadata"] = args["metadata"]
        return fields

    def _bot_message(self, ts: str) -> dict[str, Any]:
        return {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "ts": ts,
            "team": self.team_id,
            "bot_profile": {"id": self.bot_id, "app_id": self.app_id, "name": "tutor"},
        }

    @staticmethod
    def _public(message: dict[str, Any], *, with_metadata: bool = True) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in message.items() if k not in ("channel", "stream", "live")}
        if not with_metadata:
            out.pop("metadata", None)
        return out

    async def _chat_post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        fields = self._message_fields(args)
        if isinstance(fields, str):
            return {"ok": False, "error": fields}
        if "blocks" in fields and (problems := self._invalid_blocks(fields["blocks"])):
            return {"ok": False, "error": "invalid_blocks", "errors": problems}
        ts = self.next_ts()
        message = self._bot_message(ts)
        message.update(fields)
        if "markdown_text" in fields:
            message["live"] = True  # a preview, until rewritten with text
        thread_ts = args.get("thread_ts")
        if thread_ts:
            message["thread_ts"] = str(thread_ts)
            if _truthy(args.get("reply_broadcast")):
                message["subtype"] = "thread_broadcast"
        message["channel"] = channel
        self._store(channel, message)
        return {"ok": True, "channel": channel, "ts": ts, "message": self._public(message)}

    async def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        message = self._find(str(channel), str(ts)) if channel and ts else None
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if message.get("user") != self.bot_user_id:
            return {"ok": False, "error": "cant_update_message"}
        fields = self._message_fields(args)
        if isinstance(fields, str):
            return {"ok": False, "error": fields}
        if "blocks" in fields and (problems := self._invalid_blocks(fields["blocks"])):
            return {"ok": False, "error": "invalid_blocks", "errors": problems}
        if "blocks" not in fields:
            message.pop("blocks", None)
        message.pop("markdown_text", None)
        message.update(fields)
        if "stream" in message:
            message["stream"]["open"] = False
        if "markdown_text" not in fields:
            message.pop("live", None)
        message["edited"] = {"user": self.bot_user_id, "ts": self.next_ts()}
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": message.get("text", ""),
            "message": self._public(message),
        }

    # -- Streams ----------------------------------------------------------------------------

    def streamed(self, channel: str, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """Messages the bot streamed (chat.startStream) in ``channel``, optionally one thread."""
        return [m for m in self.messages(channel, thread_ts) if "stream" in m]

    def _stream_chunks(self, message: dict[str, Any], args: dict[str, Any]) -> str | None:
        """Add markdown_text and chunks to a streamed message; the error, if Slack would refuse."""
        pieces: list[str] = []
        if args.get("markdown_text"):
            pieces.append(str(args["markdown_text"]))
        chunks = args.get("chunks")
        if isinstance(chunks, str):
            chunks = decode_json_string(chunks)
        tasks = []
        for chunk in chunks if isinstance(chunks, list) else []:
            if not isinstance(chunk, dict) or chunk.get("type") not in (
                "markdown_text",
                "task_update",
                "plan_update",
                "blocks",
            ):
                return "invalid_chunks"
            if chunk["type"] == "markdown_text":
                pieces.append(str(chunk.get("text") or ""))
            elif chunk["type"] == "task_update":
                if not chunk.get("id") or chunk.get("status") not in (
                    "pending",
                    "in_progress",
                    "complete",
                    "error",
                ):
                    return "invalid_chunks"
                tasks.append(chunk)
        added = "".join(pieces)
        if len(message.get("text", "")) + len(added) > STREAM_TEXT_LIMIT:
            return "msg_too_long"
        message["text"] = message.get("text", "") + added
        stream = message["stream"]
        for task in tasks:
            known = stream["tasks"].setdefault(task["id"], {})
            known.update(copy.deepcopy(task))
            stream["task_updates"].append(copy.deepcopy(task))
        return None

    def _streaming(self, args: dict[str, Any]) -> dict[str, Any] | str:
        channel, ts = args.get("channel"), args.get("ts")
        message = self._find(str(channel), str(ts)) if channel and ts else None
        if message is None:
            return "message_not_found"
        stream = message.get("stream")
        if stream is None or not stream["open"] or time.monotonic() - stream["started"] > self.stream_expiry:
            return "message_not_in_streaming_state"
        return message

    async def _chat_start_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, thread_ts = str(args.get("channel") or ""), args.get("thread_ts")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not thread_ts:
            return {"ok": False, "error": "invalid_arguments"}
        if self.refuse_streams:
            return {"ok": False, "error": self.refuse_streams}
        if not channel.startswith("D"):
            for field_name in ("recipient_user_id", "recipient_team_id"):
                if not args.get(field_name):
                    return {"ok": False, "error": f"missing_{field_name}"}
        ts = self.next_ts()
        message = self._bot_message(ts)
        message.update({"text": "", "thread_ts": str(thread_ts), "channel": channel, "live": True})
        message["stream"] = {
            "open": True,
            "started": time.monotonic(),
            "tasks": {},
            "task_updates": [],
            "appends": [],
            "mode": args.get("task_display_mode"),
        }
        problem = self._stream_chunks(message, args)
        if problem:
            return {"ok": False, "error": problem}
        self._store(channel, message)
        return {"ok": True, "channel": channel, "ts": ts}

    async def _chat_append_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(args)
        if isinstance(message, str):
            return {"ok": False, "error": message}
        appends = message["stream"]["appends"]
        now = time.monotonic()
        if self.append_interval and appends and now - appends[-1] < self.append_interval:
            wait = self.append_interval - (now - appends[-1])
            return {"ok": False, "error": "ratelimited", "retry_after": max(1, round(wait + 0.49))}
        problem = self._stream_chunks(message, args)
        if problem:
            return {"ok": False, "error": problem}
        appends.append(now)
        return {"ok": True, "channel": message["channel"], "ts": message["ts"]}

    async def _chat_stop_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(args)
        if isinstance(message, str):
            return {"ok": False, "error": message}
        if args.get("blocks") is not None and (problems := self._invalid_blocks(args["blocks"])):
            return {"ok": False, "error": "invalid_blocks", "errors": problems}
        problem = self._stream_chunks(message, args)
        if problem:
            return {"ok": False, "error": problem}
        if args.get("blocks") is not None:
            message["blocks"] = args["blocks"]
        if args.get("metadata") is not None:
            message["metadata"] = args["metadata"]
        message["stream"]["open"] = False
        return {
            "ok": True,
            "channel": message["channel"],
            "ts": message["ts"],
            "message": self._public(message),
        }

    async def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        message = self._find(str(channel), str(ts)) if channel and ts else None
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if message.get("user") != self.bot_user_id:
            return {"ok": False, "error": "cant_delete_message"}
        self.channel_messages[str(channel)].remove(message)
        self.deleted_messages.append(message)
        return {"ok": True, "channel": channel, "ts": ts}

    async def _chat_post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, user = args.get("channel"), args.get("user")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not user:
            return {"ok": False, "error": "user_not_in_channel"}
        fields = self._message_fields(args)
        if isinstance(fields, str):
            return {"ok": False, "error": fields}
        ts = self.next_ts()
        message = self._bot_message(ts)
        message.update(fields)
        message.update({"channel": channel, "ephemeral_user": user})
        if args.get("thread_ts"):
            message["thread_ts"] = str(args["thread_ts"])
        self.ephemeral_messages.append(message)
        return {"ok": True, "message_ts": ts}

    async def _chat_get_permalink(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("message_ts")
        if not channel or not ts:
            return {"ok": False, "error": "message_not_found"}
        link = f"https://{self.team_domain}.slack.com/archives/{channel}/p{str(ts).replace('.', '')}"
        return {"ok": True, "channel": channel, "permalink": link}

    async def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, root_ts = args.get("channel"), args.get("ts")
        if not channel or not root_ts:
            return {"ok": False, "error": "invalid_arguments"}
        thread = self.all_messages(str(channel), str(root_ts))
        if not thread:
            return {"ok": False, "error": "thread_not_found"}
        with_metadata = _truthy(args.get("include_all_metadata"))
        replies = [m for m in thread if m["ts"] != root_ts]
        out: list[dict[str, Any]] = []
        for message in thread:
            public = self._public(message, with_metadata=with_metadata)
            if message["ts"] == root_ts and replies:
                public["thread_ts"] = root_ts
                public["reply_count"] = len(replies)
                public["reply_users"] = sorted({str(m.get("user", "")) for m in replies})
                public["reply_users_count"] = len(public["reply_users"])
                public["latest_reply"] = replies[-1]["ts"]
            out.append(public)
        start = int(args.get("cursor") or 0)
        limit = int(args.get("limit") or 1000)
        page = out[start : start + limit]
        more = start + limit < len(out)
        return {
            "ok": True,
            "messages": page,
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    async def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.channels:
            return {"ok": True, "channel": copy.deepcopy(self.channels[channel])}
        is_im = channel.startswith("D")
        info: dict[str, Any] = {
            "id": channel,
            "name": "" if is_im else channel.lower(),
            "is_channel": channel.startswith("C"),
            "is_group": channel.startswith("G"),
            "is_im": is_im,
            "is_mpim": False,
            "is_private": not channel.startswith("C"),
            "is_archived": False,
            "is_general": False,
            "is_member": True,
            "is_ext_shared": False,
            "context_team_id": self.team_id,
            "created": 1_700_000_000,
        }
        if is_im:
            info["user"] = "U0ALICE"
        return {"ok": True, "channel": info}

    async def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user_id = str(args.get("user") or "")
        if user_id in self.users:
            return {"ok": True, "user": copy.deepcopy(self.users[user_id])}
        if self.strict_users or not user_id.startswith(("U", "W")):
            return {"ok": False, "error": "user_not_found"}
        return {
            "ok": True,
            "user": {
                "id": user_id,
                "team_id": self.team_id,
                "name": "alice",
                "real_name": "Alice Liddell",
                "deleted": False,
                "tz": "Europe/London",
                "profile": {"display_name": "Alice", "real_name": "Alice Liddell"},
                "is_bot": False,
                "is_admin": user_id in self.admins,
                "is_owner": False,
            },
        }

    def _reaction_args(self, args: dict[str, Any]) -> tuple[str, str, str] | str:
        channel, ts, name = args.get("channel"), args.get("timestamp"), args.get("name")
        if not name:
            return "invalid_name"
        if not channel or not ts:
            return "no_item_specified"
        if self._find(str(channel), str(ts)) is None:
            return "message_not_found"
        return str(channel), str(ts), str(name).strip(":")

    async def _reactions_add(self, args: dict[str, Any]) -> dict[str, Any]:
        parsed = self._reaction_args(args)
        if isinstance(parsed, str):
            return {"ok": False, "error": parsed}
        channel, ts, name = parsed
        users = self.reactions.setdefault((channel, ts), {}).setdefault(name, [])
        if self.bot_user_id in users:
            return {"ok": False, "error": "already_reacted"}
        users.append(self.bot_user_id)
        return {"ok": True}

    async def _reactions_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        parsed = self._reaction_args(args)
        if isinstance(parsed, str):
            return {"ok": False, "error": parsed}
        channel, ts, name = parsed
        users = self.reactions.get((channel, ts), {}).get(name, [])
        if self.bot_user_id not in users:
            return {"ok": False, "error": "no_reaction"}
        users.remove(self.bot_user_id)
        return {"ok": True}

    async def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        """A modal opened for a click: needs the click's trigger_id (valid for 3 s at Slack)."""
        trigger_id, view = args.get("trigger_id"), args.get("view")
        if not trigger_id:
            return {"ok": False, "error": "invalid_arguments"}
        if problems := self._invalid_view(view):
            return {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": problems}}
        opened = {
            **copy.deepcopy(view),
            "id": f"V0MODAL{len(self.opened_views) + 1}",
            "team_id": self.team_id,
        }
        self.opened_views.append({"trigger_id": str(trigger_id), "view": opened})
        return {"ok": True, "view": opened}

    async def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        view_obj = dict(view) if isinstance(view, dict) else {}
        view_obj.setdefault("id", "V0FAKEHOME")
        view_obj.setdefault("team_id", self.team_id)
        return {"ok": True, "view": view_obj}

    async def _files_info(self, args: dict[str, Any]) -> dict[str, Any]:
        info = self.file_info(str(args.get("file") or ""))
        if info is None:
            return {"ok": False, "error": "file_not_found"}
        return {
            "ok": True,
            "file": info,
            "comments": [],
            "response_metadata": {"next_cursor": ""},
        }

    async def _files_get_upload_url(self, args: dict[str, Any]) -> dict[str, Any]:
        filename, length = args.get("filename"), args.get("length")
        if not filename or length in (None, ""):
            return {"ok": False, "error": "invalid_arguments"}
        try:
            declared = int(length)
        except (TypeError, ValueError):
            return {"ok": False, "error": "invalid_arguments"}
        fid = self.new_file_id()
        self._pending_uploads[fid] = _PendingUpload(file_id=fid, filename=str(filename), length=declared)
        return {"ok": True, "upload_url": f"{self.origin}/upload/v1/{fid}", "file_id": fid}

    async def _files_complete_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        files = args.get("files")
        if isinstance(files, str):
            files = decode_json_string(files)
        if not isinstance(files, list) or not files:
            return {"ok": False, "error": "invalid_arguments"}
        pending: list[tuple[_PendingUpload, str | None]] = []
        for entry in files:
            if not isinstance(entry, dict):
                return {"ok": False, "error": "invalid_arguments"}
            upload = self._pending_uploads.get(str(entry.get("id")))
            if upload is None or upload.content is None:
                return {"ok": False, "error": "file_not_found"}
            title = entry.get("title")
            pending.append((upload, str(title) if title is not None else None))

        channel_ids: list[str] = []
        if args.get("channel_id"):
            channel_ids.append(str(args["channel_id"]))
        if args.get("channels"):
            channel_ids.extend(c for c in str(args["channels"]).split(",") if c)
        thread_ts = str(args["thread_ts"]) if args.get("thread_ts") else None
        initial_comment = args.get("initial_comment")
        comment = str(initial_comment) if initial_comment is not None else None

        result_files: list[dict[str, Any]] = []
        shared_files: list[dict[str, Any]] = []
        for upload, title in pending:
            del self._pending_uploads[upload.file_id]
            content = upload.content or b""
            mimetype = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
            self.host_file(
                upload.filename,
                content,
                mimetype,
                file_id=upload.file_id,
                user=self.bot_user_id,
                title=title if title is not None else upload.filename,
            )
            hosted = self.hosted_files[upload.file_id]
            hosted.uploaded_at = time.monotonic()
            result_files.append({"id": upload.file_id, "title": hosted.info["title"]})
            shared_files.append(copy.deepcopy(hosted.info))
            targets: list[str | None] = [*channel_ids] or [None]
            for channel in targets:
                self._uploads.append(
                    SharedUpload(
                        file_id=upload.file_id,
                        filename=upload.filename,
                        title=title,
                        content=content,
                        channel_id=channel,
                        thread_ts=thread_ts,
                        initial_comment=comment,
                    )
                )

        for channel in channel_ids:
            ts = self.next_ts()
            message = self._bot_message(ts)
            message.update(
                {
                    "text": comment or "",
                    "files": shared_files,
                    "upload": True,
                    "display_as_bot": False,
                    "channel": channel,
                }
            )
            if thread_ts:
                message["thread_ts"] = thread_ts
            self._store(channel, message)
            kind = "public" if channel.startswith("C") else "private"
            share: dict[str, Any] = {
                "reply_users": [],
                "reply_users_count": 0,
                "reply_count": 0,
                "ts": ts,
                "channel_name": channel.lower(),
                "team_id": self.team_id,
                "share_user_id": self.bot_user_id,
                "source": "UNKNOWN",
                "is_silent_share": False,
            }
            if thread_ts:
                share["thread_ts"] = thread_ts
            for upload, _ in pending:
                hosted = self.hosted_files[upload.file_id]
                hosted.shares.setdefault(kind, {}).setdefault(channel, []).append(share)
                hosted.shared_at = time.monotonic()
        return {"ok": True, "files": result_files}

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        rec = recorded(request)
        upload = self._pending_uploads.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="Not Found")
        if rec.files:
            part = rec.files.get("file") or next(iter(rec.files.values()))
            upload.content = part.content
        else:
            upload.content = rec.body
        return web.Response(status=200, text="OK", content_type="text/plain")

    async def _download(self, request: web.Request) -> web.StreamResponse:
        rec = recorded(request)
        team_file = request.match_info["team_file"]
        _, _, fid = team_file.partition("-")
        hosted = self.hosted_files.get(fid)
        file_team = team_file.partition("-")[0]
        if self._team_of_token(rec.bearer) != file_team or hosted is None:
            # Slack does not answer 401: it redirects to the sign-in page (200 text/html).
            return web.Response(status=200, text=_SIGN_IN_PAGE, content_type="text/html")
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": str(hosted.info.get("mimetype") or "application/octet-stream"),
                "Content-Length": str(len(hosted.content)),
                "Content-Disposition": f'attachment; filename="{hosted.info["name"]}"',
            },
        )
        await response.prepare(request)
        view = memoryview(hosted.content)
        for start in range(0, len(view), _CHUNK_SIZE):
            await response.write(bytes(view[start : start + _CHUNK_SIZE]))
        await response.write_eof()
        return response

    async def _response_url(self, request: web.Request) -> web.StreamResponse:
        rec = recorded(request)
        payload = rec.json if isinstance(rec.json, dict) else dict(rec.form)
        payload = {**payload, "_path": request.match_info["name"]}
        self.responded.append(payload)
        return web.Response(text="ok", content_type="text/plain")


__all__ = ["FakeSlack", "SharedUpload"]
