"""Slack's rate limits, kept by every run of a process together.

Two rules (../shared/docs/slack.md, rate limits):
- posting into one channel is paced to about one message a second, with short bursts, as Slack
  allows (`chat.postMessage`: "1 per second per channel"); waiting runs take turns in order;
- a 429 is honoured for its method by every run of the process, not only by the call that got
  it: Slack's Retry-After is the workspace's, so a second run calling at once would only earn
  another 429. A 429 on one way of posting a new message (`chat.postMessage`, `chat.startStream`)
  holds both.

Slack's limits are per workspace: in distribution mode each workspace has a Pacer of its own
(`sibling`), so one workspace's 429 never holds another's answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

log = logging.getLogger(__name__)

#: Methods that post into a channel: paced per channel.
POSTING = frozenset({"chat.postMessage", "chat.startStream"})
#: Without a Retry-After header (Slack always sends one), wait this long.
DEFAULT_RETRY_AFTER = 1.0
#: Less than this short of a whole token counts as one (float rounding, not a wait).
_EPSILON = 1e-9
#: Channels whose buckets are kept; idle, full ones are forgotten beyond this.
MAX_CHANNELS = 1000


@dataclass
class _Bucket:
    tokens: float
    at: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Pacer:
    def __init__(
        self,
        *,
        rate: float = 1.0,
        burst: int = 3,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._blocked_until: dict[str, float] = {}
        self._channels: dict[str, _Bucket] = {}
        #: 429s seen, by method (metrics, tests).
        self.rate_limited: dict[str, int] = {}

    def sibling(self) -> Pacer:
        """A pacer with the same pace and none of this one's holds: another workspace's."""
        return Pacer(rate=self._rate, burst=int(self._burst), clock=self._clock, sleep=self._sleep)

    def block(self, method: str, seconds: float) -> None:
        """Slack said Retry-After `seconds` for `method`: nobody in this process calls it before."""
        until = self._clock() + seconds
        key = _family(method)
        self._blocked_until[key] = max(until, self._blocked_until.get(key, 0.0))
        self.rate_limited[method] = self.rate_limited.get(method, 0) + 1
        log.info("Slack rate-limited %s: every run waits %.1f s", method, seconds)

    async def wait_turn(self, method: str, channel: str | None = None) -> None:
        """Return when `method` may be called (into `channel`, for posting methods)."""
        await self._unblocked(method)
        if channel is None or method not in POSTING:
            return
        bucket = self._bucket(channel)
        async with bucket.lock:  # asyncio's lock serves its waiters in order: turns are taken in order
            while (wait := self._take(bucket)) > 0:
                await self._sleep(wait)
            await self._unblocked(method)

    async def _unblocked(self, method: str) -> None:
        while (wait := self._blocked_until.get(_family(method), 0.0) - self._clock()) > 0:
            await self._sleep(wait)

    def _bucket(self, channel: str) -> _Bucket:
        bucket = self._channels.get(channel)
        if bucket is None:
            if len(self._channels) >= MAX_CHANNELS:
                self._forget_idle()
            bucket = self._channels[channel] = _Bucket(tokens=self._burst, at=self._clock())
        return bucket

    def _take(self, bucket: _Bucket) -> float:
        """Take a token if there is one (0.0), else how long until there is."""
        now = self._clock()
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens >= 1.0 - _EPSILON:  # a token short by a rounding error is a token
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def _forget_idle(self) -> None:
        now = self._clock()
        for channel, bucket in list(self._channels.items()):
            full = bucket.tokens + (now - bucket.at) * self._rate >= self._burst
            if full and not bucket.lock.locked():
                del self._channels[channel]


def _family(method: str) -> str:
    """Methods Slack limits together: every way of putting a new message into a channel."""
    return "new message" if method in POSTING else method


class SharedRateLimitHandler(AsyncRateLimitErrorRetryHandler):
    """slack_sdk's 429 retry, but the Retry-After is the whole process's: it blocks the method in
    the Pacer, and this call (like every other one) waits for the Pacer."""

    def __init__(self, pacer: Pacer, *, max_retry_count: int = 3) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.pacer = pacer

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        if response is None:
            if error is not None:
                raise error
            return
        method = urlsplit(request.url).path.rsplit("/", 1)[-1]
        self.pacer.block(method, _retry_after(response))
        state.next_attempt_requested = True
        await self.pacer.wait_turn(method)
        state.increment_current_attempt()


def _retry_after(response: HttpResponse) -> float:
    for name, values in response.headers.items():
        if name.lower() == "retry-after" and values:
            try:
                return max(0.0, float(values[0]))
            except ValueError:
                break
    return DEFAULT_RETRY_AFTER
