"""Turn a model's Markdown answer into Slack ``mrkdwn`` messages.

The pipeline is :func:`format_reply`:

1. :func:`strip_sandbox_links` replaces the model's ``sandbox:/mnt/data/...`` links (which mean
   nothing outside the model's sandbox) with the name of the file the bot uploads.
2. :func:`markdown_to_mrkdwn` converts CommonMark/GFM-ish Markdown to Slack ``mrkdwn``
   (see docs/slack.md §8).
3. :func:`split_message` cuts the result into chunks that fit one ``chat.postMessage`` ``text``
   (docs/slack.md §6.1), never leaving a code block open across a chunk boundary.

Everything here is a pure function on strings.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from bot.math_text import display_lines, inline_text

__all__ = [
    "SLACK_CHUNK_LIMIT",
    "DisplayMath",
    "escape_mrkdwn",
    "format_answer",
    "format_reply",
    "markdown_to_mrkdwn",
    "split_message",
    "strip_sandbox_links",
]

SLACK_CHUNK_LIMIT = 3000
"""Maximum characters per posted message (§6.1: split at ≤ 3,000-3,500)."""


@dataclass(frozen=True)
class DisplayMath:
    """A display equation of the answer, to be shown as an image in its place."""

    latex: str
    """The equation's LaTeX source, without its delimiters (``\\[ \\]``, ``$$``, ``\\begin{equation}``)."""
    fallback: str
    """mrkdwn shown instead of an image: a Unicode layout, or the LaTeX in a code block."""


_FENCE = "```"
_RULE = "─" * 10
_BULLET = "•"
_NESTED_BULLET = "◦"
_UNCHECKED = "☐"
_CHECKED = "☑"

# Private-use characters: placeholders for protected spans and emphasis markers.
_PH_OPEN = "\ue000"
_PH_CLOSE = "\ue001"
_BOLD_MARK = "\ue010"
_ITALIC_MARK = "\ue011"
_STRIKE_MARK = "\ue012"
_PRIVATE_CHARS = dict.fromkeys(range(0xE000, 0xE020))
_PLACEHOLDER = re.compile(f"{_PH_OPEN}(\\d+){_PH_CLOSE}")


# --------------------------------------------------------------------------------------------
# Escaping
# --------------------------------------------------------------------------------------------

_BARE_AMP = re.compile(r"&(?!(?:amp|lt|gt);)")


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def escape_mrkdwn(text: str) -> str:
    """Escape ``&``, ``<`` and ``>`` for Slack; nothing else.

    An ``&`` that already starts ``&amp;``, ``&lt;`` or ``&gt;`` is left alone, so the function
    is idempotent.
    """
    return _BARE_AMP.sub("&amp;", text).replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------------------------
# Sandbox links
# --------------------------------------------------------------------------------------------

_SANDBOX_TARGET = r"<?(sandbox:[^\s)>\"]+(?:[ \t]+[^\s)>\"]+)*)>?"
_SANDBOX_LINK = re.compile(
    r"!?\[[^\[\]\n]*\]\(\s*" + _SANDBOX_TARGET + r"(?:\s+\"[^\"\n]*\")?\s*\)",
    re.IGNORECASE,
)
_SANDBOX_BARE = re.compile(r"sandbox:[^\s()\[\]<>\"'`]+", re.IGNORECASE)
_TRAILING_PUNCT = ".,;:!?*_~'\""
_FENCE_OPEN = re.compile(r"^([ \t]*)(`{3,}|~{3,})([^`]*)$")
_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")


def _sandbox_name(target: str, uploaded: Mapping[str, str] | None) -> str:
    path = unquote(re.sub(r"(?i)^sandbox:", "", target)).strip()
    base = path.rstrip("/").rsplit("/", 1)[-1] or "file"
    if uploaded:
        for key in (base, path, target):
            if key in uploaded:
                return uploaded[key]
    return base


def _split_trailing(url: str) -> tuple[str, str]:
    """Split trailing sentence punctuation (and an unbalanced ``)``) off a bare URL."""
    end = len(url)
    while end > 0:
        ch = url[end - 1]
        if ch in _TRAILING_PUNCT or (ch == ")" and url[:end].count("(") < url[:end].count(")")):
            end -= 1
            continue
        break
    return url[:end], url[end:]


def _sandbox_prose(text: str, uploaded: Mapping[str, str] | None) -> str:
    def link(m: re.Match[str]) -> str:
        return f"**{_sandbox_name(m.group(1), uploaded)}** (attached below)"

    def bare(m: re.Match[str]) -> str:
        url, tail = _split_trailing(m.group(0))
        if url.lower() == "sandbox:":
            return m.group(0)
        return f"**{_sandbox_name(url, uploaded)}** (attached below){tail}"

    return _SANDBOX_BARE.sub(bare, _SANDBOX_LINK.sub(link, text))


def _sandbox_code(text: str, uploaded: Mapping[str, str] | None) -> str:
    def bare(m: re.Match[str]) -> str:
        url, tail = _split_trailing(m.group(0))
        return _sandbox_name(url, uploaded) + tail

    return _SANDBOX_BARE.sub(bare, text)


def strip_sandbox_links(markdown: str, uploaded: Mapping[str, str] | None = None) -> str:
    """Replace ``sandbox:`` links with the name of the attached file.

    ``[label](sandbox:/mnt/data/x.png)``, ``![alt](sandbox:/mnt/data/x.png)`` and a bare
    ``sandbox:/mnt/data/x.png`` all become ``**x.png** (attached below)`` (Markdown bold, so
    ``*x.png* (attached below)`` after :func:`markdown_to_mrkdwn`). ``uploaded`` maps a sandbox
    file's basename to the title to show instead. Inside code spans and code blocks only the file
    name is substituted. The result contains no ``sandbox:`` URL.
    """
    out: list[str] = []
    fence: str | None = None
    for line in markdown.split("\n"):
        if fence is not None:
            out.append(_sandbox_code(line, uploaded))
            stripped = line.strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = None
            continue
        opener = _FENCE_OPEN.match(line)
        if opener:
            fence = opener.group(2)
            out.append(_sandbox_code(line, uploaded))
            continue
        pieces: list[str] = []
        pos = 0
        for m in _CODE_SPAN.finditer(line):
            pieces.append(_sandbox_prose(line[pos : m.start()], uploaded))
            pieces.append(_sandbox_code(m.group(0), uploaded))
            pos = m.end()
        pieces.append(_sandbox_prose(line[pos:], uploaded))
        out.append("".join(pieces))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------------------------


def _inline_math(latex: str) -> str:
    """Inline math as Unicode text, or in a code span where Slack could read an ``_`` as italics
    or Unicode can't show it (then as its LaTeX source)."""
    text = inline_text(latex)
    if text is None:
        return f"`{escape_mrkdwn(latex)}`"
    if "_" in text:
        return f"`{escape_mrkdwn(text)}`"
    return escape_mrkdwn(_inert_handles(text))


def _display(latex: str) -> DisplayMath:
    lines = display_lines(latex)
    if lines is None:
        lines = [line.strip() for line in latex.split("\n") if line.strip()]
    return DisplayMath(latex, _code_block(lines))


def _code_block(lines: list[str]) -> str:
    body = "\n".join(escape_mrkdwn(line) for line in lines)
    return f"{_FENCE}\n{body}\n{_FENCE}"


# --------------------------------------------------------------------------------------------
# Inline conversion
# --------------------------------------------------------------------------------------------

_MATH_PAREN = re.compile(r"\\\((.+?)\\\)")
_MATH_BRACKET = re.compile(r"\\\[(.+?)\\\]")
_MATH_DOUBLE = re.compile(r"\$\$(.+?)\$\$")
# $...$ only when it is clearly math: no space inside either delimiter, no `$` inside, and the
# closing `$` not followed by a digit (so "$5 and $10" and "$5-$10" stay currency).
_MATH_SINGLE = re.compile(r"(?<![\\$])\$(?=[^\s$])([^$\n]+?)(?<=[^\s$\\])\$(?![\d$])")
_ESCAPED = re.compile(r"\\([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])")
_SLACK_TOKEN = re.compile(
    r"<(?:[@#!][A-Za-z0-9^_.\-]+(?:\|[^<>\n]*)?|(?:https?|mailto|ftp|tel):[^<>\s|]+(?:\|[^<>\n]*)?)>"
)
_EMAIL_AUTOLINK = re.compile(r"<([\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+)>")
_MD_LINK = re.compile(
    r"(!?)\[([^\[\]\n]*)\]\(\s*<?([^\s()<>]+(?:\([^\s()<>]*\)[^\s()<>]*)*)>?"
    r"(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'))?\s*\)"
)
_LINK_SCHEME = re.compile(r"(?i)^(?:https?|ftp|mailto|tel):")
_BARE_URL = re.compile(r"(?<![\w/])(?:https?|ftp)://[^\s<>\ue000\ue001]+")
#: An ``@`` that starts a handle (not the one in ann@example.com).
_HANDLE = re.compile(r"(?<![\w@])@(?=[\w.\-])")
_INERT_AT = "@\u2060"
#: An address as a reader takes it: optional scheme and user@, a dotted host (group 1), port, path.
_ADDRESS = re.compile(
    r"(?i)(?:[a-z][a-z0-9+.\-]*:/*)?(?:[^\s@/<>|:]+@)?((?:[\w\-]+\.)+[a-z]{2,})(?::\d+)?(?:[/?#][^\s<>|]*)?"
)

_EMPHASIS: list[tuple[re.Pattern[str], str, str]] = [
    (
        re.compile(r"(?<![\w*])\*\*\*(?=[^\s*])(.+?)(?<=[^\s*])\*\*\*(?![\w*])"),
        _BOLD_MARK + _ITALIC_MARK,
        _ITALIC_MARK + _BOLD_MARK,
    ),
    (
        re.compile(r"(?<!\w)___(?=[^\s_])(.+?)(?<=[^\s_])___(?!\w)"),
        _BOLD_MARK + _ITALIC_MARK,
        _ITALIC_MARK + _BOLD_MARK,
    ),
    (re.compile(r"(?<![\w*])\*\*(?=[^\s*])(.+?)(?<=[^\s*])\*\*(?![\w*])"), _BOLD_MARK, _BOLD_MARK),
    (re.compile(r"(?<!\w)__(?=[^\s_])(.+?)(?<=[^\s_])__(?!\w)"), _BOLD_MARK, _BOLD_MARK),
    (re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])"), _ITALIC_MARK, _ITALIC_MARK),
    (re.compile(r"(?<!\w)_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)"), _ITALIC_MARK, _ITALIC_MARK),
    (re.compile(r"(?<!~)~~(?=[^\s~])(.+?)(?<=[^\s~])~~(?!~)"), _STRIKE_MARK, _STRIKE_MARK),
]


class _Protector:
    """Swap finished mrkdwn fragments out of the text so later rules cannot touch them."""

    def __init__(self) -> None:
        self._store: list[str] = []

    def keep(self, rendered: str) -> str:
        self._store.append(rendered)
        return f"{_PH_OPEN}{len(self._store) - 1}{_PH_CLOSE}"

    def restore(self, text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: self._store[int(m.group(1))], text)


def _code_span_content(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == " " and raw[-1] == " " and raw.strip():
        return raw[1:-1]
    return raw


def _render_slack_token(token: str) -> str:
    inner = token[1:-1]
    if inner[0] == "!":
        return escape_mrkdwn(_special_mention_text(inner[1:]))
    if inner[0] in "@#":
        return token
    url, bar, label = inner.partition("|")
    return _link(url, label) if bar else f"<{escape_mrkdwn(url)}>"


def _special_mention_text(inner: str) -> str:
    """``<!here>``, ``<!subteam^S…|@team>``… as the words they show, so nobody is notified: the
    model (or a prompt injected into what it read) must not ping a channel as the bot."""
    name, _, label = inner.partition("|")
    kind, _, ident = name.partition("^")
    if kind == "subteam":
        return _inert_handles(f"@{(label or ident).removeprefix('@')}")
    if kind in ("here", "channel", "everyone"):
        return _inert_handles(f"@{kind}")
    return _inert_handles(label or kind)  # e.g. <!date^…|Feb 18, 2014>


def _inert_handles(text: str) -> str:
    """``@here``, ``@admins``… with a word joiner after the ``@``: it reads the same, but Slack's
    automatic parsing of mrkdwn (section blocks default to it) can't turn it into a mention."""
    return _HANDLE.sub(_INERT_AT, text)


def _host(address: str) -> str:
    return address.lower().rstrip(".").removeprefix("www.")


def _target_host(url: str) -> str:
    if url.lower().startswith("mailto:"):
        return _host(url.rpartition("@")[2].split("?")[0])
    return _host(urlsplit(url).hostname or "")


def _link(url: str, label: str) -> str:
    """A mrkdwn link to `url` (both unescaped). A label naming another address than the target
    is a disguise: a label that is only such an address gives way to the real one; any other
    such label stays as text, followed by the real address."""
    label = label.strip()
    target = escape_mrkdwn(url)
    if not label or label == url:
        return f"<{target}>"
    named = list(_ADDRESS.finditer(label))
    if all(_host(m.group(1)) == _target_host(url) for m in named):
        return f"<{target}|{escape_mrkdwn(_inert_handles(label))}>"
    if len(named) == 1 and named[0].group(0) == label:
        mailbox = url.partition(":")[2] if url.lower().startswith("mailto:") else ""
        return f"<{target}|{escape_mrkdwn(mailbox)}>" if mailbox else f"<{target}>"
    return f"{escape_mrkdwn(_inert_handles(label))} (<{target}>)"


def _wrap(opener: str, closer: str) -> Callable[[re.Match[str]], str]:
    return lambda m: f"{opener}{m.group(1)}{closer}"


def _inline(text: str, *, drop_bold: bool = False) -> str:
    """Convert the inline Markdown of one line to mrkdwn."""
    prot = _Protector()

    def math(m: re.Match[str]) -> str:
        return prot.keep(_inline_math(m.group(1).strip()))

    text = _CODE_SPAN.sub(lambda m: prot.keep(f"`{escape_mrkdwn(_code_span_content(m.group(2)))}`"), text)
    text = text.replace("\\$", prot.keep("$"))
    for pattern in (_MATH_PAREN, _MATH_BRACKET, _MATH_DOUBLE, _MATH_SINGLE):
        text = pattern.sub(math, text)
    text = _ESCAPED.sub(lambda m: prot.keep(escape_mrkdwn(m.group(1))), text)
    text = _SLACK_TOKEN.sub(lambda m: prot.keep(_render_slack_token(m.group(0))), text)
    text = _EMAIL_AUTOLINK.sub(lambda m: prot.keep(f"<mailto:{m.group(1)}|{m.group(1)}>"), text)

    def link(m: re.Match[str]) -> str:
        label = prot.restore(m.group(2))
        for marker in ("`", "**", "__", "~~"):
            label = label.replace(marker, "")
        url = m.group(3)
        if not _LINK_SCHEME.match(url):
            return prot.keep(escape_mrkdwn(label.strip()))
        return prot.keep(_link(url, _unescape(label)))

    text = _MD_LINK.sub(link, text)

    def bare_url(m: re.Match[str]) -> str:
        url, tail = _split_trailing(m.group(0))
        return prot.keep(escape_mrkdwn(url)) + tail

    text = _BARE_URL.sub(bare_url, text)
    text = _inert_handles(text)

    for pattern, opener, closer in _EMPHASIS:
        text = pattern.sub(_wrap(opener, closer), text)

    text = prot.restore(escape_mrkdwn(text))
    if drop_bold:
        text = text.replace(_BOLD_MARK, "")
    return text.replace(_BOLD_MARK, "*").replace(_ITALIC_MARK, "_").replace(_STRIKE_MARK, "~")


# --------------------------------------------------------------------------------------------
# Block conversion
# --------------------------------------------------------------------------------------------

_HR = re.compile(r"^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$")
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_QUOTE = re.compile(r"^ {0,3}>[ \t]?(.*)$")
_TASK = re.compile(r"^([ \t]*)[-*+][ \t]+\[([ xX])\][ \t]+(.*)$")
_BULLET_ITEM = re.compile(r"^([ \t]*)[-*+][ \t]+(\S.*)$")
_TABLE_SEP = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def _indent_width(indent: str) -> int:
    return len(indent.expandtabs(4))


def _convert_line(line: str) -> str:
    if _HR.match(line):
        return _RULE
    heading = _HEADING.match(line)
    if heading:
        title = _inline(heading.group(1) or "", drop_bold=True).strip()
        return f"*{title}*" if title else ""
    quote = _QUOTE.match(line)
    if quote:
        inner = quote.group(1)
        while inner.startswith(">"):  # mrkdwn has one quote level only
            inner = inner[1:].lstrip(" \t")
        converted = _convert_line(inner)
        return f"> {converted}" if converted else ">"
    task = _TASK.match(line)
    if task:
        box = _UNCHECKED if task.group(2) == " " else _CHECKED
        return " " * _indent_width(task.group(1)) + f"{box} {_inline(task.group(3))}"
    bullet = _BULLET_ITEM.match(line)
    if bullet:
        width = _indent_width(bullet.group(1))
        mark = _NESTED_BULLET if width >= 2 else _BULLET
        return " " * width + f"{mark} {_inline(bullet.group(2))}"
    return _inline(line)


def _fence_block(lines: list[str], start: int) -> tuple[str | None, int]:
    """Consume a fenced code block starting at ``lines[start]``; return (block, next index)."""
    opener = _FENCE_OPEN.match(lines[start])
    assert opener is not None
    indent = _indent_width(opener.group(1))
    fence = opener.group(2)
    body: list[str] = []
    i = start + 1
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
            i += 1
            break
        line = lines[i].expandtabs(4)
        strip = min(indent, len(line) - len(line.lstrip(" ")))
        body.append(line[strip:].rstrip())
        i += 1
    while body and not body[-1].strip():
        body.pop()
    while body and not body[0].strip():
        body.pop(0)
    return (_code_block(body) if body else None), i


_DISPLAY_ENV = re.compile(
    r"\\begin\{((?:equation|align|alignat|gather|multline|eqnarray|displaymath)\*?"
    r"|[pbBvV]?matrix|cases)\}"
)
_UNWRAPPED_ENVS = ("equation", "equation*", "displaymath")


def _display_math(lines: list[str], start: int) -> tuple[DisplayMath, int] | None:
    """A display equation starting a line: ``$$ … $$``, ``\\[ … \\]`` or ``\\begin{align}…``."""
    first = lines[start].strip()
    env = _DISPLAY_ENV.match(first)
    delimiters = [("$$", "$$"), ("\\[", "\\]")]
    if env:
        delimiters = [(env.group(0), f"\\end{{{env.group(1)}}}")]
    for open_, close in delimiters:
        if not first.startswith(open_):
            continue
        found = _delimited(lines, start, first[len(open_) :], close)
        if found is None:
            return None
        body, end = found
        if env and env.group(1) not in _UNWRAPPED_ENVS:
            body = f"{open_}\n{body}\n{close}" if "\n" in body else f"{open_} {body} {close}"
        return (_display(body), end) if body else None
    return None


def _delimited(lines: list[str], start: int, rest: str, close: str) -> tuple[str, int] | None:
    """The text up to ``close`` at the end of this line or a later one, and the next line's index."""
    if close in rest:
        if not rest.endswith(close) or rest.index(close) != len(rest) - len(close):
            return None  # e.g. "$$x$$ and more": leave it to the inline rules
        return rest[: -len(close)].strip(), start + 1
    parts = [rest]
    end = start + 1
    while end < len(lines) and close not in lines[end]:
        parts.append(lines[end])
        end += 1
    if end == len(lines) or not lines[end].strip().endswith(close):
        return None
    parts.append(lines[end].strip()[: -len(close)])
    return "\n".join(p.strip() for p in parts if p.strip()), end + 1


def _split_cells(row: str) -> list[str]:
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return [cell.strip() for cell in _CELL_SPLIT.split(row)]


def _plain_cell(cell: str) -> str:
    """Table cells go into a code block, so reduce their Markdown to plain text."""
    text = _MD_LINK.sub(lambda m: f"{m.group(2)} ({m.group(3)})" if m.group(2) else m.group(3), cell)
    for pattern in (_MATH_PAREN, _MATH_DOUBLE, _MATH_SINGLE):
        text = pattern.sub(lambda m: inline_text(m.group(1).strip()) or m.group(1).strip(), text)
    for marker in ("**", "__", "`", "~~"):
        text = text.replace(marker, "")
    return text.replace("\\|", "|")


def _table(lines: list[str], start: int) -> tuple[str, int] | None:
    """A GFM pipe table starting at ``lines[start]``, rendered as an aligned code block."""
    if start + 1 >= len(lines) or "|" not in lines[start] or "|" not in lines[start + 1]:
        return None
    if not _TABLE_SEP.match(lines[start + 1]):
        return None
    header = _split_cells(lines[start])
    specs = _split_cells(lines[start + 1])
    if len(header) != len(specs):
        return None
    aligns = [
        "c" if s.startswith(":") and s.endswith(":") else "r" if s.endswith(":") else "l" for s in specs
    ]
    rows = [header]
    end = start + 2
    while end < len(lines) and "|" in lines[end] and lines[end].strip():
        rows.append(_split_cells(lines[end]))
        end += 1
    ncols = len(header)  # as in GFM: extra cells are dropped, missing ones are empty
    cells = [[_plain_cell(c) for c in r[:ncols]] + [""] * (ncols - len(r)) for r in rows]
    widths = [max(1, *(len(r[j]) for r in cells)) for j in range(ncols)]

    def pad(text: str, width: int, align: str) -> str:
        if align == "r":
            return text.rjust(width)
        if align == "c":
            return text.center(width)
        return text.ljust(width)

    out: list[str] = []
    for k, row in enumerate(cells):
        out.append(" | ".join(pad(c, w, a) for c, w, a in zip(row, widths, aligns, strict=True)).rstrip())
        if k == 0:
            out.append("-+-".join("-" * w for w in widths))
    return _code_block(out), end


def _convert(markdown: str) -> list[str | DisplayMath]:
    """The answer as mrkdwn lines and display equations, in order."""
    text = markdown.replace("\r\n", "\n").replace("\r", "\n").translate(_PRIVATE_CHARS)
    lines = text.split("\n")
    out: list[str | DisplayMath] = []
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if _FENCE_OPEN.match(line):
            block, i = _fence_block(lines, i)
            if block is not None:
                out.append(block)
            continue
        found = _display_math(lines, i) or _table(lines, i)
        if found is not None:
            part, i = found
            out.append(part)
            continue
        i += 1
        converted = _convert_line(line) if line.strip() else ""
        if converted or (out and out[-1]):
            out.append(converted)
    while out and not out[-1]:
        out.pop()
    return out


def _fold(parts: list[str | DisplayMath]) -> str:
    return "\n".join(p.fallback if isinstance(p, DisplayMath) else p for p in parts)


def markdown_to_mrkdwn(markdown: str) -> str:
    """Convert model Markdown to Slack mrkdwn.

    Block rules: fenced code (language tag dropped, content verbatim apart from ``&<>``
    escaping), display math (``$$``/``\\[``) and pipe tables become ```` ``` ```` blocks;
    headings become a bold line; bullets become ``•``/``◦``; task items ``☐``/``☑``; rules a
    line of ``─``; blockquotes keep their leading ``>``; runs of blank lines collapse to one.
    Inline rules: ``**b**``/``__b__`` → ``*b*``, ``*i*``/``_i_`` → ``_i_`` (not inside words,
    so ``snake_case`` and ``x_1*y_2`` survive), ``~~s~~`` → ``~s~``, ``[l](url)`` and
    ``![alt](url)`` → ``<url|l>``; code spans and math (``\\(..\\)``, ``$..$`` but not
    currency) become inline code, with common LaTeX shown as Unicode; Slack tokens such as
    ``<@U…>`` pass through; ``&``, ``<`` and ``>`` are escaped everywhere else.
    The answer is the model's, and a prompt injection can write it: broadcasts and user-group
    mentions (``<!here>``, ``<!subteam^…>``) become plain ``@here`` text, and every handle in
    prose gets a word joiner after its ``@``, so nothing notifies anybody; a link whose label
    names another address than its target shows the real target.
    """
    return _fold(_convert(markdown))


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------

_OPEN_PREFIX = _FENCE + "\n"
_CLOSE_SUFFIX = "\n" + _FENCE
_MIN_LIMIT = 16
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_ENTITY = re.compile(r"&(?:amp|lt|gt);")
_ANGLE_TOKEN = re.compile(r"<[^<>\s][^<>\n]*>")


_LONG_WHITESPACE = re.compile(r"\s{8,}")


def _shrink_ws(m: re.Match[str]) -> str:
    return "\n" if "\n" in m.group(0) else " "


class _Splitter:
    def __init__(self, text: str, limit: int) -> None:
        self.limit = limit
        self._index(text)

    def _index(self, text: str) -> None:
        self.text = text
        n = len(text)
        # in_code[b]: a cut just before text[b] falls inside a ``` block.
        self.in_code = [False] * (n + 1)
        # no_cut[b]: never cut just before text[b] (inside ``` or an &entity;).
        self.no_cut = [False] * (n + 1)
        in_token = [False] * (n + 1)
        state = False
        i = 0
        while i < n:
            self.in_code[i] = state
            if text.startswith(_FENCE, i):
                self.in_code[i + 1] = self.in_code[i + 2] = state
                self.no_cut[i + 1] = self.no_cut[i + 2] = True
                state = not state
                i += 3
            else:
                i += 1
        self.in_code[n] = state
        for m in _ENTITY.finditer(text):
            for j in range(m.start() + 1, m.end()):
                self.no_cut[j] = True
        for m in _ANGLE_TOKEN.finditer(text):
            for j in range(m.start() + 1, m.end()):
                in_token[j] = True
        newlines = [i for i, ch in enumerate(text) if ch == "\n"]
        # Break candidates, best first: blank line, line end outside code, line end inside
        # code (needs the fence closed and reopened), space outside a <link|label> token.
        self.tiers: list[list[int]] = [
            [m.start() for m in _PARAGRAPH_BREAK.finditer(text) if not self.in_code[m.start()]],
            [i for i in newlines if not self.in_code[i]],
            [i for i in newlines if self.in_code[i]],
            [i for i, ch in enumerate(text) if ch in " \t" and not in_token[i]],
        ]

    def _next_start(self, cut: int) -> int:
        text = self.text
        if self.in_code[cut]:
            return cut + 1 if cut < len(text) and text[cut] in "\n \t" else cut
        end = cut
        while end < len(text) and text[end] in " \t\n":
            end += 1
        run = text[cut:end]
        return cut + run.rindex("\n") + 1 if "\n" in run else end

    def _size(self, start: int, cut: int) -> int | None:
        """Length of the chunk text[start:cut] would make, or None if that cut is not allowed."""
        if cut <= start or self.no_cut[cut]:
            return None
        body = self.text[start:cut].rstrip()
        if not body.strip():
            return None
        size = len(body) + (len(_OPEN_PREFIX) if self.in_code[start] else 0)
        if self.in_code[cut]:
            # Cutting right after an opening fence or right before the closing one would leave
            # an empty code block behind.
            nxt = self.text[self._next_start(cut) :].lstrip(" \t")
            if body.endswith(_FENCE) or nxt.startswith(_FENCE):
                return None
            size += len(_CLOSE_SUFFIX)
        return size if size <= self.limit else None

    def _choose_cut(self, start: int) -> int | None:
        hi = start + self.limit
        min_fill = self.limit // 3
        fallback: int | None = None
        for tier in self.tiers:
            idx = bisect.bisect_right(tier, hi)
            lo = bisect.bisect_right(tier, start)
            for k in range(idx - 1, lo - 1, -1):
                cut = tier[k]
                size = self._size(start, cut)
                if size is None:
                    continue
                if size >= min_fill:
                    return cut
                if fallback is None:
                    fallback = cut
                break
        if fallback is not None:
            return fallback
        for cut in range(min(hi, len(self.text)), start, -1):
            if self._size(start, cut) is not None:
                return cut
        return None

    def _forced_cut(self, start: int) -> int:
        """Last resort, never expected in practice: cut anywhere that fits, to make progress."""
        cut = min(len(self.text), start + self.limit - len(_OPEN_PREFIX) - len(_CLOSE_SUFFIX))
        while cut > start + 1 and self.no_cut[cut]:
            cut -= 1
        return max(cut, start + 1)

    def chunks(self) -> list[str]:
        text = self.text
        out: list[str] = []
        start = 0
        while start < len(text):
            prefix = _OPEN_PREFIX if self.in_code[start] else ""
            rest = text[start:].rstrip()
            if not rest.strip():
                break
            if len(prefix) + len(rest) <= self.limit:
                out.append(prefix + rest)
                break
            cut = self._choose_cut(start)
            if cut is None:
                # Nothing but whitespace fits after `start` (e.g. a fence followed by thousands
                # of blank lines): shrink long whitespace runs, which Slack would not show
                # anyway, and try again.
                shrunk = text[:start] + _LONG_WHITESPACE.sub(_shrink_ws, text[start:])
                if shrunk != text:
                    self._index(shrunk)
                    text = self.text
                    continue
                cut = self._forced_cut(start)
            suffix = _CLOSE_SUFFIX if self.in_code[cut] else ""
            if text[start:cut].strip():
                out.append(prefix + text[start:cut].rstrip() + suffix)
            start = self._next_start(cut)
        return out


def split_message(mrkdwn: str, limit: int = SLACK_CHUNK_LIMIT) -> list[str]:
    """Split mrkdwn into chunks of at most ``limit`` characters.

    Cuts prefer, in order: a blank line, a line end, a line end inside a code block, a space, and
    finally any character (never inside ```` ``` ```` or an ``&amp;``-style entity). A cut is
    taken at the latest allowed position of the best kind that still fills a third of
    ``limit``. A code block cut in two is closed with ```` ``` ```` at the end of one chunk and
    reopened at the start of the next. Whitespace at the cuts is dropped; no chunk is empty.
    """
    if limit < _MIN_LIMIT:
        raise ValueError(f"limit must be at least {_MIN_LIMIT}")
    text = re.sub(r"^(?:[ \t]*\n)+", "", mrkdwn).rstrip()
    if not text.strip():
        return []
    return _Splitter(text, limit).chunks()


def format_answer(
    text: str,
    uploaded: Mapping[str, str] | None = None,
    *,
    images: bool = True,
    limit: int = SLACK_CHUNK_LIMIT,
) -> list[str | DisplayMath]:
    """The answer as mrkdwn text chunks (each ≤ ``limit``, inline math already Unicode) and
    display equations, in order. With ``images=False`` every display equation is folded into
    the text as its fallback, so the result is only ``str``."""
    parts = _convert(strip_sandbox_links(text, uploaded))
    if not images:
        return list(split_message(_fold(parts), limit))
    out: list[str | DisplayMath] = []
    run: list[str | DisplayMath] = []
    for part in [*parts, None]:
        if isinstance(part, str):
            run.append(part)
            continue
        out.extend(split_message(_fold(run), limit))
        run = []
        if part is not None:
            out.append(part)
    return out


def format_reply(
    markdown: str,
    uploaded: Mapping[str, str] | None = None,
    limit: int = SLACK_CHUNK_LIMIT,
) -> list[str]:
    """Model Markdown to postable mrkdwn chunks: sandbox links, conversion, splitting."""
    return [p for p in format_answer(markdown, uploaded, images=False, limit=limit) if isinstance(p, str)]


# --------------------------------------------------------------------------------------------
# Live answers: the model's Markdown as it streams (Slack renders `markdown_text` itself)
# --------------------------------------------------------------------------------------------

#: Constructs whose glue needs them whole: held back from a live stream until they close.
_LIVE_OPENERS = (("\\(", "\\)"), ("\\[", "\\]"), ("[", ")"), ("<", ">"))
#: A construct open for longer than this is not one (e.g. "[1]" without a link): shown anyway.
_LIVE_HOLD = 400
_SLACK_ANGLE = re.compile(r"<(?=[!@#])")


def live_markdown(text: str) -> str:
    """A stable piece of the model's Markdown for a live stream: only the glue Slack doesn't do.

    Sandbox links become the file's name (the file itself is uploaded), inline math becomes
    Unicode, display math a code block until the final answer shows it as an image, and
    mentions (``<!here>``, ``<@U…>``, ``@channel``) are made inert. The final answer replaces
    the live text with the posted form (see `format_answer`).
    """
    text = strip_sandbox_links(text)
    text = _MATH_BRACKET.sub(lambda m: f"\n```\n{m.group(1).strip()}\n```\n", text)
    text = _MATH_DOUBLE.sub(lambda m: f"\n```\n{m.group(1).strip()}\n```\n", text)
    text = _MATH_PAREN.sub(lambda m: _unescape(_inline_math(m.group(1))), text)
    return _inert_handles(_SLACK_ANGLE.sub("<\u2060", text))


def stable_end(text: str) -> int:
    """How much of a growing answer can be shown for good: up to its last whitespace, and before
    any link, math or Slack token that hasn't closed yet (its glue would change it)."""
    end = max(text.rfind(" "), text.rfind("\n"))
    if end < 0:
        return 0
    end += 1
    for opener, closer in _LIVE_OPENERS:
        start = text.rfind(opener, max(0, end - _LIVE_HOLD), end)
        if opener == "[" and start > 0 and text[start - 1] == "\\":
            continue  # display math, handled as "\["
        if start >= 0 and text.find(closer, start + len(opener)) < 0:
            end = min(end, start)
    return end
