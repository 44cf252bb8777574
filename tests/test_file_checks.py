"""Which shared files are accepted, and telling a real file from Slack's sign-in page."""

from __future__ import annotations

import pytest

from bot.files import SharedFile, file_type, looks_right
from tests.fakes import png_bytes

SIGN_IN = b"\n  <!DOCTYPE html><html lang='en'><head><title>Slack</title>"


@pytest.mark.parametrize(
    ("name", "filetype", "head", "ok"),
    [
        ("covid.csv", "csv", b"date,country,cases\n2020-03-01,Germany,1\n", True),
        ("covid.csv", "csv", SIGN_IN, False),
        ("book.xlsx", "xlsx", b"PK\x03\x04\x14\x00\x06\x00", True),
        ("book.xlsx", "xlsx", b"date,country\n", False),
        ("chart.png", "png", png_bytes(), True),
        ("chart.png", "png", SIGN_IN, False),
        ("photo.jpg", "jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", True),
        ("anim.gif", "gif", b"GIF89a\x01\x00", True),
        ("pic.webp", "webp", b"RIFF\x24\x00\x00\x00WEBPVP8 ", True),
        ("paper.pdf", "pdf", b"%PDF-1.7\n", True),
        ("data.json", "json", b'{"a": 1}', True),
        ("notes.txt", "text", b"binary\x00junk", False),
    ],
)
def test_content_matches_its_type(name: str, filetype: str, head: bytes, ok: bool) -> None:
    assert looks_right(filetype, name, head) is ok


def test_kinds() -> None:
    assert SharedFile("F1", "covid.csv", "csv").kind == "data"
    assert SharedFile("F1", "covid.csv", "csv").analysable
    assert SharedFile("F2", "Book.XLSX", "").kind == "data"  # extension when Slack gives no filetype
    assert SharedFile("F3", "photo.png", "png").kind == "image"
    assert not SharedFile("F3", "photo.png", "png").analysable
    assert SharedFile("F4", "report.pdf", "pdf").kind == "document"
    assert SharedFile("F5", "setup.exe", "exe").kind is None
    assert file_type("binary", "data.tsv") == "tsv"
