"""Log lines with the run and the Slack message they are about.

`log_context(...)` sets `run_id`, `team`, `channel`, `thread_ts` and `response_id` for everything
logged inside it (and in tasks started there); `ContextFilter` copies them onto each record. With
`LOG_FORMAT=json` each record is one JSON object (python-json-logger) with those as fields and a
traceback as the `exc_info` field; by default a line stays human-readable, the context appended
as `[run_id=… channel=…]`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import IO, Literal

from pythonjsonlogger.json import JsonFormatter

from bot.config import Settings

LogFormat = Literal["text", "json"]
FIELDS = ("run_id", "team", "channel", "thread_ts", "response_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The HTTP clients log every request URL at INFO; that's noise, not news.
NOISY = ("httpx", "httpx2", "openai", "slack_sdk", "aiohttp.access")

_NOTHING: Mapping[str, str | int | None] = MappingProxyType({})
_CONTEXT: ContextVar[Mapping[str, str | int | None]] = ContextVar("log_context", default=_NOTHING)


@contextlib.contextmanager
def log_context(**fields: str | int | None) -> Iterator[None]:
    """Records logged inside carry these fields (None: unknown, left out); `bind` within is undone."""
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind(**fields: str | int | None) -> None:
    """Add what became known midway (a response id) to the current context."""
    _CONTEXT.set({**_CONTEXT.get(), **fields})


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _CONTEXT.get().items():
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


class _TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        known = [
            f"{name}={getattr(record, name)}" for name in FIELDS if getattr(record, name, None) is not None
        ]
        return f"{line} [{' '.join(known)}]" if known else line


def log_handler(log_format: LogFormat, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing `log_format` lines with the context."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp=True,
            )
        )
    else:
        handler.setFormatter(_TextFormatter(TEXT_FORMAT))
    return handler


def setup_logging(settings: Settings) -> None:
    """The process's logging, from LOG_LEVEL and LOG_FORMAT (called once by the CLI)."""
    logging.basicConfig(level=settings.log_level.upper(), handlers=[log_handler(settings.log_format)])
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
