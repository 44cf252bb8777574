"""The HTTP way in: Slack's signature checked on the raw bytes before anything is decoded, then
the body handed to Bolt only if it is something Bolt can route."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl

from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.handlers import payload_problem

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


class RawBodyVerifier(SignatureVerifier):
    """slack_sdk's verifier (staleness, constant-time compare) over the raw request bytes: Slack
    signs bytes, and a body that isn't UTF-8 must fail (or pass) on its signature, not in a decoder."""

    def generate_signature(self, *, timestamp: str, body: str | bytes) -> str | None:
        raw = body.encode() if isinstance(body, str) else body
        base = b"v0:" + timestamp.encode() + b":" + raw
        return "v0=" + hmac.new(self.signing_secret.encode(), base, hashlib.sha256).hexdigest()


def signature_problem(verifier: SignatureVerifier, body: bytes, headers: Mapping[str, str]) -> str | None:
    """Why this request is not Slack's (None when its signature is good and fresh)."""
    timestamp = headers.get("X-Slack-Request-Timestamp")
    signature = headers.get("X-Slack-Signature")
    if timestamp is None or signature is None:
        return "no signature"
    if not _TIMESTAMP.fullmatch(timestamp):
        return "a timestamp that is not a number"
    if not _SIGNATURE.fullmatch(signature):
        return "a malformed signature"
    if not verifier.is_valid(body, timestamp, signature):
        return "a wrong or stale signature"
    return None


def is_ssl_check(body: bytes) -> bool:
    """`ssl_check=1&token=…`, which Bolt answers before any signature check too."""
    if len(body) > 1024 or b"ssl_check" not in body:
        return False
    return dict(parse_qsl(body.decode("utf-8", "replace"))).get("ssl_check") == "1"


class MalformedRequest(ValueError):
    pass


def bolt_request(body: bytes, query: str, headers: Mapping[str, str]) -> AsyncBoltRequest:
    """The signed body as Bolt's request; MalformedRequest when it is not something Bolt can route."""
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest("the body is not UTF-8") from None
    try:
        request = AsyncBoltRequest(body=decoded, query=query, headers=dict(headers))
    except Exception as exc:  # parsing what the sender wrote: JSON, form or payload= errors
        raise MalformedRequest(f"the body does not parse ({type(exc).__name__})") from None
    problem = payload_problem(request.body)
    if problem is not None:
        raise MalformedRequest(problem)
    return request
