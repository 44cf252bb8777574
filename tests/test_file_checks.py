"""Which shared files are accepted, and telling a real file from Slack's sign-in page."""

from __future__ import annotations

from typing import Any

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
        ("covid.csv", "csv", b"\xef\xbb\xbf" + SIGN_IN, False),
        ("covid.csv", "csv", b"\xef\xbb\xbf<html><body>Sign in</body></html>", False),
        ("covid.csv", "csv", b"<script>window.location='/signin'</script>", False),
        ("covid.csv", "csv", b"\r\n<BODY onload=x()>", False),
        ("data.json", "json", b"  <Script src=a.js></script>", False),
        ("covid.csv", "csv", b"\xef\xbb\xbfdate,country,cases\n2020-03-01,Germany,1\n", True),
        ("notes.txt", "txt", b"a < b and <c> is not a page", True),
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


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"id": "F1", "size": "big"}, SharedFile("F1", "F1", size=0)),
        ({"id": "F1", "size": "2048"}, SharedFile("F1", "F1", size=2048)),
        ({"id": "F1", "size": "²"}, SharedFile("F1", "F1", size=0)),
        ({"id": "F1", "size": 2048.0}, SharedFile("F1", "F1", size=2048)),
        ({"id": "F1", "size": -1}, SharedFile("F1", "F1", size=0)),
        ({"id": "F1", "size": True}, SharedFile("F1", "F1", size=0)),
        ({"id": "F1", "size": 1e300}, SharedFile("F1", "F1", size=0)),
        ({"id": "F1", "size": float("nan")}, SharedFile("F1", "F1", size=0)),
        ({"id": "F1", "size": [3]}, SharedFile("F1", "F1", size=0)),
        ({"id": "F1", "name": {"a": 1}, "title": "Data"}, SharedFile("F1", "Data")),
        ({"id": "F1", "name": ["x.csv"]}, SharedFile("F1", "F1")),
        ({"id": 7, "name": 12}, SharedFile("7", "12")),
        ({"id": "F1", "name": "x.csv", "filetype": 3, "mimetype": None}, SharedFile("F1", "x.csv")),
        (
            {"id": "F1", "name": "x.CSV", "filetype": "CSV", "mimetype": "text/csv"},
            SharedFile("F1", "x.CSV", "csv", "text/csv"),
        ),
        ({"id": {"nested": 1}}, SharedFile("", "file")),
    ],
)
def test_file_objects_of_the_wrong_shape_are_coerced(obj: dict[str, Any], expected: SharedFile) -> None:
    assert SharedFile.from_slack(obj) == expected
