"""LaTeX math as Unicode text, for a chat client that renders no LaTeX.

pylatexenc parses the LaTeX and knows its symbols (``\\alpha`` → α, ``\\mathbb{R}`` → ℝ,
``\\vec{v}`` → v⃗). This module adds what it leaves out: sub- and superscripts from Unicode's own
tables (``x₀``, ``x²``, else ``x_(n+1)``), fractions with the parentheses a reader needs
(``x³⁄3``, ``(a + b)/(2a)``), roots, and a monospace layout for matrices, cases and aligned rows.

:func:`inline_text` and :func:`display_lines` return ``None`` when Unicode can't show the LaTeX
faithfully (an unknown command, an ``array``…); the caller then shows the source itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# pylatexenc ships no type information.
from pylatexenc.latex2text import (  # type: ignore[import-untyped]
    LatexNodes2Text,
    MacroTextSpec,
    get_default_latex_context_db,
)
from pylatexenc.latexwalker import (  # type: ignore[import-untyped]
    LatexCharsNode,
    LatexCommentNode,
    LatexEnvironmentNode,
    LatexGroupNode,
    LatexMacroNode,
    LatexNode,
    LatexSpecialsNode,
    LatexWalker,
    LatexWalkerError,
)
from pylatexenc.latexwalker import (
    get_default_latex_context_db as _parser_context_db,
)
from pylatexenc.macrospec import MacroSpec  # type: ignore[import-untyped]

__all__ = ["display_lines", "inline_text"]


def _script_table(tag: str) -> dict[str, str]:
    """Base character → its super/subscript form, from Unicode's ``<super>``/``<sub>`` decompositions."""
    table: dict[str, str] = {}
    for cp in range(0x2FFF):  # the later of two forms wins: ᵃ over the ordinal ª
        decomposition = unicodedata.decomposition(chr(cp)).split()
        if len(decomposition) == 2 and decomposition[0] == tag:
            table[chr(int(decomposition[1], 16))] = chr(cp)
    return table


def _vulgar_fractions() -> dict[tuple[str, str], str]:
    table: dict[tuple[str, str], str] = {}
    for cp in range(0x2190):
        parts = unicodedata.decomposition(chr(cp)).split()
        if parts[:1] == ["<fraction>"] and len(parts) == 4:
            table[(chr(int(parts[1], 16)), chr(int(parts[3], 16)))] = chr(cp)
    return table


_SUPERSCRIPT = _script_table("<super>")
_SUBSCRIPT = _script_table("<sub>")
_VULGAR = _vulgar_fractions()
_SCRIPT_CHARS = set(_SUPERSCRIPT.values()) | set(_SUBSCRIPT.values())

# Commands pylatexenc's table lacks that models write.
_EXTRA_SYMBOLS = {
    "ne": "≠",
    "|": "‖",
    "deg": "deg",
    "degree": "°",
    "triangle": "△",
    "checkmark": "✓",
    "dfrac": "",
    "tfrac": "",
    "lvert": "|",
    "rvert": "|",
    "lVert": "‖",
    "rVert": "‖",
    "gcd": "gcd",
    "det": "det",
    "lcm": "lcm",
    "dim": "dim",
    "ker": "ker",
    "arg": "arg",
}
_DROPPED = {
    "left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr", "biggl", "biggr",
    "displaystyle", "textstyle", "limits", "nolimits", "nonumber", "notag", "!",
}  # fmt: skip
_DROPPED_WITH_ARG = {"label", "tag", "color"}
_TEXT_FONTS = {"text", "textrm", "textit", "textbf", "textsf", "texttt", "textnormal", "mbox", "hbox"}
_MATH_FONTS = {"mathrm", "mathit", "mathbf", "mathsf", "mathtt", "boldsymbol", "bm", "operatorname", "boxed"}
_LETTER_FONTS = {"mathbb", "mathcal", "mathfrak", "mathscr", "hat", "bar", "vec", "dot", "ddot", "tilde"}
_FRACTIONS = {"frac", "dfrac", "tfrac", "cfrac"}
_BINOMIALS = {"binom", "dbinom", "tbinom"}
_ROOT_SIGNS = {"2": "√", "3": "∛", "4": "∜"}
_CHARS = str.maketrans({"-": "−", "*": "∗", "'": "′", "~": " "})
_OPERATORS = set("+−=±∓·×÷<>≤≥≠≈≡→←↔⇒⇔∈∉⊂⊆∪∩∧∨,;:/|∣")
_BRACKETS = {"(": ")", "[": "]", "{": "}", "|": "|", "⟨": "⟩"}

_context = get_default_latex_context_db().filter_context()
_context.add_context_category(
    "slack-tutor",
    macros=[MacroTextSpec(name, text) for name, text in _EXTRA_SYMBOLS.items()],
    prepend=True,
)
_parser_context = _parser_context_db().filter_context()
_parser_context.add_context_category(
    "slack-tutor",
    macros=[
        *(MacroSpec(name, "{{") for name in (*_FRACTIONS, *_BINOMIALS)),
        *(MacroSpec(name, "{") for name in (*_DROPPED_WITH_ARG, *_MATH_FONTS, "pmod", "mathscr")),
    ],
    prepend=True,
)
_to_text = LatexNodes2Text(latex_context=_context, math_mode="text", strict_latex_spaces=True)


class _Unfaithful(Exception):
    """Unicode can't show this LaTeX as it is meant."""


def _parse(latex: str) -> list[LatexNode]:
    try:
        walker = LatexWalker(latex, latex_context=_parser_context, tolerant_parsing=False)
        nodes, _, _ = walker.get_latex_nodes()
    except LatexWalkerError as error:
        raise _Unfaithful(str(error)) from error
    return list(nodes)


def _is_atom(text: str) -> bool:
    """True if ``text`` needs no parentheses as a numerator, denominator or root: ``3``, ``x²``,
    ``√2``, ``(a + b)``."""
    core = "".join(ch for ch in text if ch not in _SCRIPT_CHARS and not unicodedata.combining(ch))
    core = core.removeprefix("√")
    if re.fullmatch(r"\d+(?:\.\d+)?|[^\W\d_]|[∞π]", core):
        return True
    call = re.fullmatch(r"(?:[^\W\d_]+′*)?([(\[{|⟨])(.*)", core)  # (a + b), f(x), sin(x)
    return call is not None and core[-1] == _BRACKETS[call.group(1)] and _balanced(call.group(2)[:-1])


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _paren(text: str) -> str:
    return text if _is_atom(text) else f"({text})"


def _fraction(num: str, den: str) -> str:
    if (num, den) in _VULGAR:
        return _VULGAR[(num, den)]
    if _is_atom(num) and _is_atom(den):
        return f"{num}⁄{den}"
    if re.fullmatch(r"[d∂]\w*", num) and re.fullmatch(r"[d∂]\w", den):  # dy/dx
        return f"{num}/{den}"
    return f"{_paren(num)}/{_paren(den)}"


def _root(body: str, index: str) -> str:
    sign = _ROOT_SIGNS.get(index)
    if sign is None:
        sign = _script(index, _SUPERSCRIPT, "^") + "√"
    return sign + _paren(body)


def _script(text: str, table: dict[str, str], mark: str) -> str:
    text = text.replace(" ", "")
    if mark == "^" and text == "∘":
        return "°"
    if text and all(ch in table for ch in text):
        return "".join(table[ch] for ch in text)
    return f"{mark}{text}" if len(text) == 1 else f"{mark}({text})"


@dataclass
class _Renderer:
    """Renders one parsed formula; ``text_mode`` inside ``\\text{}``."""

    text_mode: bool = False

    def nodes(self, nodes: Sequence[LatexNode | None]) -> str:
        out: list[str] = []
        pieces = list(self._pieces(nodes))
        i = 0
        while i < len(pieces):
            piece = pieces[i]
            i += 1
            if not self.text_mode and piece in ("^", "_"):
                while i < len(pieces) and pieces[i] == " ":
                    i += 1
                if i == len(pieces):
                    raise _Unfaithful("script without argument")
                table = _SUPERSCRIPT if piece == "^" else _SUBSCRIPT
                out.append(_script(pieces[i], table, piece))
                i += 1
            else:
                out.append(piece)
        return "".join(out)

    def _pieces(self, nodes: Sequence[LatexNode | None]) -> Iterator[str]:
        """Each character, group or command as one piece, so ``^`` and ``_`` can take the next."""
        for node in nodes:
            if node is None or isinstance(node, LatexCommentNode):
                continue
            if isinstance(node, LatexCharsNode):
                chars = node.chars if self.text_mode else node.chars.translate(_CHARS)
                yield from chars
            elif isinstance(node, LatexGroupNode):
                yield self.nodes(node.nodelist)
            elif isinstance(node, LatexMacroNode):
                text = self.macro(node)
                # The space in "\pi r" only ends the command; in "\sin x" or "\lessdot x" it separates.
                letter = len(text.rstrip()) == 1 and text.isalpha()
                yield text + (" " if node.macro_post_space and not letter else "")
            elif isinstance(node, LatexSpecialsNode) and node.specials_chars == "~":
                yield " "
            else:
                raise _Unfaithful(f"unexpected {node.latex_verbatim()!r} in inline math")

    def macro(self, node: LatexMacroNode) -> str:
        name = node.macroname
        args = node.nodeargd.argnlist if node.nodeargd else []
        if name in _DROPPED:
            return ""
        if name in _DROPPED_WITH_ARG:
            return ""
        if name in _FRACTIONS:
            return _fraction(self.arg(args, -2), self.arg(args, -1))
        if name in _BINOMIALS:
            return f"C({self.arg(args, -2)}, {self.arg(args, -1)})"
        if name == "sqrt":
            index = self.arg(args, 0) if len(args) > 1 and args[0] is not None else "2"
            return _root(self.arg(args, -1), index)
        if name in _TEXT_FONTS:
            return _Renderer(text_mode=True).arg_nodes(args)
        if name in _MATH_FONTS:
            return self.arg_nodes(args)
        if name in _LETTER_FONTS and not all(isinstance(a, LatexGroupNode | LatexCharsNode) for a in args):
            raise _Unfaithful(name)
        if name == "pmod":
            return f" (mod {self.arg(args, -1)})"
        if _context.get_macro_spec(name) is None:
            raise _Unfaithful(f"\\{name}")
        return str(_to_text.nodelist_to_text([node])).translate(_CHARS if not self.text_mode else {})

    def arg(self, args: Sequence[LatexNode | None], index: int) -> str:
        node = args[index] if -len(args) <= index < len(args) else None
        if node is None:
            raise _Unfaithful("missing argument")
        inner = node.nodelist if isinstance(node, LatexGroupNode) else [node]
        return _tidy(self.nodes(inner))

    def arg_nodes(self, args: Sequence[LatexNode | None]) -> str:
        return self.arg(args, -1) if args else ""


_RELATION = re.compile(r"\s*([=<>≤≥≠≈≡±∓→⇒⇔↦∈∉⊂⊆·∪∩∧∨])\s*")
_BINARY = re.compile(r"(?<=[\w)\]}|′!" + "".join(sorted(_SCRIPT_CHARS)) + r"])\s*([+−×÷∗])\s*(?=\S)")


def _tidy(text: str) -> str:
    """One space around relations and binary operators (``b²−4ac`` → ``b² − 4ac``), none doubled."""
    text = _RELATION.sub(r" \1 ", text)
    text = _BINARY.sub(r" \1 ", text)
    return re.sub(r"[ \t]+", " ", text).strip()


def _render(nodes: Sequence[LatexNode | None]) -> str:
    text = _tidy(_Renderer().nodes(nodes))
    if "\\" in text or "`" in text:
        raise _Unfaithful("left-over LaTeX")
    return text


def inline_text(latex: str) -> str | None:
    """``\\frac{-b \\pm \\sqrt{b^2-4ac}}{2a}`` → ``(−b ± √(b² − 4ac))/(2a)``, or None."""
    try:
        return _render(_parse(latex))
    except _Unfaithful:
        return None


# --------------------------------------------------------------------------------------------
# Display layout: rows, matrices, cases
# --------------------------------------------------------------------------------------------

_ROW_ENVS = {
    "equation", "equation*", "displaymath", "align", "align*", "aligned", "alignat", "alignat*", "gather",
    "gather*", "gathered", "split", "multline", "multline*", "eqnarray", "eqnarray*",
}  # fmt: skip
_MATRIX_BRACKETS = {
    "matrix": ("", ""),
    "smallmatrix": ("", ""),
    "pmatrix": ("(⎛⎜⎝", ")⎞⎟⎠"),
    "bmatrix": ("[⎡⎢⎣", "]⎤⎥⎦"),
    "Bmatrix": ("{⎧⎪⎩", "}⎫⎪⎭"),
    "vmatrix": ("||||", "||||"),
    "Vmatrix": ("‖‖‖‖", "‖‖‖‖"),
}
_CASES_BRACE = "{⎧⎪⎩"


@dataclass(frozen=True)
class _Box:
    """A block of monospace lines, placed on a shared middle line when set side by side."""

    lines: list[str]

    @property
    def width(self) -> int:
        return max((len(line) for line in self.lines), default=0)

    @property
    def middle(self) -> int:
        return (len(self.lines) - 1) // 2


def _beside(boxes: Sequence[_Box]) -> _Box:
    above = max((b.middle for b in boxes), default=0)
    below = max((len(b.lines) - 1 - b.middle for b in boxes), default=0)
    rows = [""] * (above + below + 1)
    for box in boxes:
        top = above - box.middle
        for k in range(len(rows)):
            j = k - top
            rows[k] += (box.lines[j] if 0 <= j < len(box.lines) else "").ljust(box.width)
    return _Box([row.rstrip() for row in rows])


def _bracket(chars: str, height: int) -> list[str]:
    """A bracket ``height`` lines tall: ``chars`` is (one line, top, middle, bottom)."""
    if not chars:
        return [""] * height
    if height == 1:
        return [chars[0]]
    brace = chars[1] in "⎧⎫"
    mid = ["⎨" if chars[1] == "⎧" else "⎬"] if brace else []
    extend = height - 2 - len(mid)
    if extend < 0:
        return [chars[1], chars[3]]
    upper = extend // 2
    return [chars[1], *[chars[2]] * upper, *mid, *[chars[2]] * (extend - upper), chars[3]]


def _split_rows(nodes: Sequence[LatexNode | None]) -> list[list[list[LatexNode]]]:
    """Rows (split at ``\\\\``) of cells (split at ``&``)."""
    rows: list[list[list[LatexNode]]] = [[[]]]
    for node in nodes:
        if node is None:
            continue
        if isinstance(node, LatexMacroNode) and node.macroname == "\\":
            rows.append([[]])
        elif isinstance(node, LatexSpecialsNode) and node.specials_chars == "&":
            rows[-1].append([])
        else:
            rows[-1][-1].append(node)
    return [row for row in rows if any(cell for cell in row)]


def _grid(rows: list[list[list[LatexNode]]]) -> list[list[_Box]]:
    return [[_row_box(cell) for cell in row] for row in rows]


def _columns(grid: list[list[_Box]], gap: str, aligns: str) -> list[str]:
    ncols = max(len(row) for row in grid)
    widths = [max((row[j].width for row in grid if j < len(row)), default=0) for j in range(ncols)]
    lines: list[str] = []
    for row in grid:
        parts: list[str] = []
        for j, width in enumerate(widths):
            text = " ".join(row[j].lines) if j < len(row) else ""
            align = aligns[j % len(aligns)]
            parts.append({"r": text.rjust, "c": text.center}.get(align, text.ljust)(width))
        lines.append(gap.join(parts).rstrip())
    return lines


def _matrix(env: LatexEnvironmentNode) -> _Box:
    opener, closer = _MATRIX_BRACKETS[env.environmentname]
    grid = _grid(_split_rows(env.nodelist))
    if any(len(cell.lines) > 1 for row in grid for cell in row):
        raise _Unfaithful("nested layout inside a matrix")
    body = _columns(grid, "  ", "c") if grid else [""]
    left, right = _bracket(opener, len(body)), _bracket(closer, len(body))
    width = max(map(len, body))
    return _Box([f"{a}{line.ljust(width)}{b}".rstrip() for a, line, b in zip(left, body, right, strict=True)])


def _cases(env: LatexEnvironmentNode) -> _Box:
    grid = _grid(_split_rows(env.nodelist))
    if not grid or any(len(cell.lines) > 1 for row in grid for cell in row):
        raise _Unfaithful("empty or nested cases")
    body = _columns(grid, "   ", "l")
    brace = _bracket(_CASES_BRACE, max(len(body), 3) if len(body) > 1 else 1)
    body += [""] * (len(brace) - len(body))
    if len(body) == 3 and len(grid) == 2:  # two cases: one above and one below the brace's point
        body = [body[0], "", body[1]]
    return _Box([f"{b} {line}".rstrip() for b, line in zip(brace, body, strict=True)])


def _row_box(nodes: Sequence[LatexNode | None]) -> _Box:
    """One row of a display: text with matrices and cases laid out beside it."""
    boxes: list[_Box] = []
    run: list[LatexNode | None] = []

    def flush() -> None:
        if run:
            text = _render(run)
            boxes.append(_Box([text] if text else []))
            run.clear()

    for node in nodes:
        if isinstance(node, LatexEnvironmentNode) and node.environmentname in _MATRIX_BRACKETS:
            flush()
            boxes.append(_pad(_matrix(node)))
        elif isinstance(node, LatexEnvironmentNode) and node.environmentname in ("cases", "dcases"):
            flush()
            boxes.append(_pad(_cases(node)))
        elif isinstance(node, LatexEnvironmentNode):
            raise _Unfaithful(node.environmentname)
        else:
            run.append(node)
    flush()
    return _beside([b for b in boxes if b.lines])


def _pad(box: _Box) -> _Box:
    """Space around a tall box, as between words."""
    return _Box([f" {line} " for line in box.lines]) if len(box.lines) > 1 else box


def _row_env(nodes: list[LatexNode]) -> tuple[str, list[LatexNode]] | None:
    """The rows environment a display consists of, e.g. ``\\begin{align}…\\end{align}``."""
    meaningful = [n for n in nodes if not (isinstance(n, LatexCharsNode) and not n.chars.strip())]
    if len(meaningful) == 1 and isinstance(meaningful[0], LatexEnvironmentNode):
        env = meaningful[0]
        if env.environmentname in _ROW_ENVS:
            return env.environmentname, list(env.nodelist)
    return None


def _dedent(lines: list[str]) -> list[str]:
    margin = min((len(line) - len(line.lstrip(" ")) for line in lines if line.strip()), default=0)
    return [line[margin:] for line in lines]


def display_lines(latex: str) -> list[str] | None:
    """A display equation as monospace lines: one per row of an ``align`` (aligned at ``&``),
    matrices drawn with tall brackets, ``cases`` with a tall brace; or None."""
    try:
        nodes = _parse(latex)
        found = _row_env(nodes)
        name, body = found if found is not None else ("", nodes)
        rows = _split_rows(body)
        if not rows:
            return None
        grid = _grid(rows)
        if len(grid) == 1 and len(grid[0]) == 1:
            return _dedent(grid[0][0].lines)
        if any(len(cell.lines) > 1 for row in grid for cell in row):
            if any(len(row) > 1 for row in grid):
                raise _Unfaithful("aligned rows with tall cells")
            return _dedent([line for row in grid for line in row[0].lines])
        aligns = "l" if name.startswith(("gather", "multline")) else "rl"
        return _dedent(_columns(grid, " ", aligns))
    except _Unfaithful:
        return None
