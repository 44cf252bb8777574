"""What the tutor accepts from Slack file shares, and how to tell a real file from a sign-in page."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: filetype → (kind, MIME type sent to OpenAI). "data" goes to the sandbox; "image" and "document"
#: also to the model (a document as `input_file` parts, or searched when large: see bot.documents).
SUPPORTED: dict[str, tuple[str, str]] = {
    "csv": ("data", "text/csv"),
    "tsv": ("data", "text/tab-separated-values"),
    "xlsx": ("data", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    "json": ("data", "application/json"),
    "text": ("document", "text/plain"),
    "txt": ("document", "text/plain"),
    "pdf": ("document", "application/pdf"),
    "docx": ("document", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    "pptx": ("document", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
    "md": ("document", "text/markdown"),
    "markdown": ("document", "text/markdown"),
    "png": ("image", "image/png"),
    "jpg": ("image", "image/jpeg"),
    "jpeg": ("image", "image/jpeg"),
    "gif": ("image", "image/gif"),
    "webp": ("image", "image/webp"),
}
#: Types worth offering an analysis for when shared without a mention.
ANALYSABLE = frozenset({"csv", "tsv", "xlsx"})
SUPPORTED_NAMES = "CSV, TSV, XLSX, JSON, TXT, MD, PDF, DOCX, PPTX, PNG, JPEG, GIF or WebP"

_MAGIC: dict[str, tuple[bytes, ...]] = {
    "xlsx": (b"PK\x03\x04",),
    "docx": (b"PK\x03\x04",),
    "pptx": (b"PK\x03\x04",),
    "pdf": (b"%PDF",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpg": (b"\xff\xd8\xff",),
    "jpeg": (b"\xff\xd8\xff",),
    "gif": (b"GIF87a", b"GIF89a"),
}
#: How a web page (Slack's sign-in page, an error page) starts, lower-cased, after any BOM and spaces.
_HTML_STARTS = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<body",
    b"<script",
    b"<meta",
    b"<title",
    b"<style",
    b"<noscript",
    b"<!--",
)
_BOM = b"\xef\xbb\xbf"
#: Sizes beyond this are not a size (BigInteger's limit).
_MAX_SIZE = (1 << 63) - 1


@dataclass(frozen=True)
class SharedFile:
    """A file from a Slack `file_share` event (possibly partial: see `needs_info`)."""

    id: str
    name: str
    filetype: str = ""
    mimetype: str = ""
    size: int = 0
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_slack(cls, obj: dict[str, Any]) -> SharedFile:
        """The file object as Slack sent it; a field of the wrong type counts as missing."""
        file_id = _text(obj.get("id"))
        return cls(
            id=file_id,
            name=_text(obj.get("name")) or _text(obj.get("title")) or file_id or "file",
            filetype=_word(obj.get("filetype")).lower(),
            mimetype=_word(obj.get("mimetype")),
            size=file_size(obj.get("size")),
            meta=dict(obj),
        )

    @property
    def kind(self) -> str | None:
        """ "data", "document", "image", or None when unsupported."""
        found = SUPPORTED.get(file_type(self.filetype, self.name, self.mimetype))
        return found[0] if found else None

    @property
    def analysable(self) -> bool:
        return file_type(self.filetype, self.name, self.mimetype) in ANALYSABLE


def _text(value: object) -> str:
    """A string field; numbers are taken as their digits, anything else as missing."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def _word(value: object) -> str:
    """A type field: only a string means anything (a wrong one falls back to the extension)."""
    return value if isinstance(value, str) else ""


def file_size(value: object) -> int:
    """A file object's `size` in bytes; 0 (unknown) when it isn't a plausible byte count."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdecimal():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= _MAX_SIZE else 0


def file_type(filetype: str, name: str, mimetype: str = "") -> str:
    """Slack's filetype, or failing that the name's extension ("covid.CSV" → "csv")."""
    if filetype and filetype not in ("binary", "auto"):
        return filetype.lower()
    if "." in name:
        return name.rsplit(".", 1)[1].lower()
    return mimetype.rsplit("/", 1)[-1].lower()


def type_label(filetype: str, name: str, mimetype: str = "") -> str:
    """How to name the type to a user: "CSV", "EXE"…"""
    return file_type(filetype, name, mimetype).upper() or "this type of"


def mime_for(filetype: str, name: str, mimetype: str = "") -> str:
    found = SUPPORTED.get(file_type(filetype, name, mimetype))
    return found[1] if found else (mimetype or "application/octet-stream")


def looks_right(filetype: str, name: str, head: bytes) -> bool:
    """Do the first bytes match the type? Catches Slack's HTML sign-in page served with a 200."""
    kind = file_type(filetype, name)
    if kind == "webp":
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    if kind in _MAGIC:
        return head.startswith(_MAGIC[kind])
    lowered = head.lstrip().removeprefix(_BOM).lstrip().lower()
    if lowered.startswith(_HTML_STARTS):
        return False
    return b"\x00" not in head[:1024]  # text formats: no NUL bytes
