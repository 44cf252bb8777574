"""Fake Slack and OpenAI HTTP servers for tests (real clients talk to them over 127.0.0.1)."""

from ._recording import FilePart, RecordedRequest, wait_for
from .openai import (
    Chart,
    ContainerFile,
    ContainerState,
    ConversationState,
    FakeOpenAI,
    ResponseState,
    StoredFile,
    Turn,
    png_bytes,
)
from .slack import FakeSlack, SharedUpload

__all__ = [
    "Chart",
    "ContainerFile",
    "ContainerState",
    "ConversationState",
    "FakeOpenAI",
    "FakeSlack",
    "FilePart",
    "RecordedRequest",
    "ResponseState",
    "SharedUpload",
    "StoredFile",
    "Turn",
    "png_bytes",
    "wait_for",
]
