"""Tests for bot.formatting: Markdown -> Slack mrkdwn, sandbox links, message splitting."""

from __future__ import annotations

import re

import pytest

from bot.formatting import (
    SLACK_CHUNK_LIMIT,
    escape_mrkdwn,
    format_reply,
    markdown_to_mrkdwn,
    split_message,
    strip_sandbox_links,
)

FENCE = "```"


def _non_ws(text: str) -> str:
    return re.sub(r"\s", "", text)


# --------------------------------------------------------------------------------------------
# escape_mrkdwn
# --------------------------------------------------------------------------------------------


def test_escape_only_amp_lt_gt() -> None:
    assert escape_mrkdwn("a < b & c > d 'q' \"x\"") == "a &lt; b &amp; c &gt; d 'q' \"x\""


def test_escape_does_not_double_escape() -> None:
    assert escape_mrkdwn("&amp; &lt; &gt; &copy;") == "&amp; &lt; &gt; &amp;copy;"
    assert escape_mrkdwn(escape_mrkdwn("a < b & c")) == "a &lt; b &amp; c"


# --------------------------------------------------------------------------------------------
# markdown_to_mrkdwn: inline rules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("**bold**", "*bold*"),
        ("__bold__", "*bold*"),
        ("*italic*", "_italic_"),
        ("_italic_", "_italic_"),
        ("***both***", "*_both_*"),
        ("___both___", "*_both_*"),
        ("~~strike~~", "~strike~"),
        ("a **bold** and *italic* word", "a *bold* and _italic_ word"),
        ("**bold with *italic* inside**", "*bold with _italic_ inside*"),
        ("(*note*): **Step 1:** done", "(_note_): *Step 1:* done"),
        ("**x**, ~~y~~.", "*x*, ~y~."),
    ],
)
def test_emphasis(markdown: str, expected: str) -> None:
    assert markdown_to_mrkdwn(markdown) == expected


@pytest.mark.parametrize(
    "text",
    [
        "snake_case_name and my_var_",
        "x_1*y_2 + x_2*y_1",
        "a*b*c",
        "2 * 3 * 4 = 24",
        "2**10 and 3**5",
        "read_csv_file_name_here",
        "**",
        "a ~ b ~ c",
    ],
)
def test_no_emphasis_inside_words_or_math(text: str) -> None:
    assert markdown_to_mrkdwn(text) == text


def test_escaping_plain_text() -> None:
    assert markdown_to_mrkdwn("a < b & c > d") == "a &lt; b &amp; c &gt; d"


def test_existing_entities_not_double_escaped() -> None:
    assert markdown_to_mrkdwn("Tom &amp; Jerry & co") == "Tom &amp; Jerry &amp; co"


@pytest.mark.parametrize(
    "token",
    [
        "<@U0ALICE>",
        "<@W012ABC>",
        "<#C0MATH>",
        "<#C0MATH|math-help>",
        "<https://example.com/a_b_c|the *docs*>",
        "<https://example.com>",
    ],
)
def test_slack_tokens_preserved(token: str) -> None:
    assert markdown_to_mrkdwn(f"hi {token} & bye") == f"hi {token} &amp; bye"


def test_slack_link_token_ampersands_escaped() -> None:
    assert (
        markdown_to_mrkdwn("<https://a.example/?x=1&y=2|A & B>")
        == "<https://a.example/?x=1&amp;y=2|A &amp; B>"
    )


def test_inline_code_untouched() -> None:
    assert (
        markdown_to_mrkdwn("use `**not bold**` and `snake_case` and `a<b && c>d`")
        == "use `**not bold**` and `snake_case` and `a&lt;b &amp;&amp; c&gt;d`"
    )


def test_double_backtick_code_span() -> None:
    assert markdown_to_mrkdwn("``a ` b``") == "`a ` b`"


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("[docs](https://docs.python.org/3/)", "<https://docs.python.org/3/|docs>"),
        (
            "see [the *re* docs](https://x.example/re_module)",
            "see <https://x.example/re_module|the *re* docs>",
        ),
        ("[`read_csv`](https://pandas.example/read_csv)", "<https://pandas.example/read_csv|read_csv>"),
        ("[a & b](https://x.example/?q=1&r=2)", "<https://x.example/?q=1&amp;r=2|a &amp; b>"),
        ('[t](https://x.example "Title")', "<https://x.example|t>"),
        ("[w](https://en.wikipedia.org/wiki/Foo_(bar))", "<https://en.wikipedia.org/wiki/Foo_(bar)|w>"),
        ("[](https://x.example)", "<https://x.example>"),
        ("[setup guide](docs/setup.md)", "setup guide"),
        ("![a chart](https://x.example/c.png)", "<https://x.example/c.png|a chart>"),
        ("<https://x.example/a_b_>", "<https://x.example/a_b_>"),
        ("mail <ann@example.com>", "mail <mailto:ann@example.com|ann@example.com>"),
    ],
)
def test_links(markdown: str, expected: str) -> None:
    assert markdown_to_mrkdwn(markdown) == expected


def test_bare_urls_stay_and_are_not_emphasised() -> None:
    assert (
        markdown_to_mrkdwn("go to https://x.example/_priv_/a_b?q=1&r=2. Then *stop*.")
        == "go to https://x.example/_priv_/a_b?q=1&amp;r=2. Then _stop_."
    )


def test_backslash_escapes() -> None:
    assert markdown_to_mrkdwn(r"\*not italic\* and \_x\_ and \# and 1\<2") == (
        "*not italic* and _x_ and # and 1&lt;2"
    )


# --------------------------------------------------------------------------------------------
# markdown_to_mrkdwn: math
# --------------------------------------------------------------------------------------------


def test_display_math_dollars_multiline() -> None:
    assert markdown_to_mrkdwn("Then:\n\n$$\nx = \\frac{3}{3} = 1\n$$\n\nDone.") == (
        "Then:\n\n```\nx = 3⁄3 = 1\n```\n\nDone."
    )


def test_display_math_one_line_and_brackets() -> None:
    assert markdown_to_mrkdwn("$$a^2 + b^2 = c^2$$") == "```\na² + b² = c²\n```"
    assert markdown_to_mrkdwn("\\[\n  x_1 < x_2\n\\]") == "```\nx₁ &lt; x₂\n```"
    assert markdown_to_mrkdwn("\\[ E = mc^2 \\]") == "```\nE = mc²\n```"


def test_display_math_keeps_unknown_latex_source() -> None:
    assert markdown_to_mrkdwn("$$\n\\lessdot x \\frob{y}\n$$") == "```\n\\lessdot x \\frob{y}\n```"
    assert markdown_to_mrkdwn("$$\n\\int_0^1 x\\,dx = \\tfrac{1}{2}\n$$") == ("```\n∫₀¹ x dx = ½\n```")


def test_inline_math_becomes_unicode_text() -> None:
    assert markdown_to_mrkdwn("so $3x = 3$ and \\(x_1*y_2\\) hold") == ("so 3x = 3 and x₁ ∗ y₂ hold")
    assert markdown_to_mrkdwn("inline $$a+b$$ here") == "inline a + b here"


@pytest.mark.parametrize(
    ("latex", "expected"),
    [
        ("$3 \\cdot 1 + 11 = 14$", "3 · 1 + 11 = 14"),
        ("$a \\times b \\div c$", "a × b ÷ c"),
        ("$x \\le 3 \\ge y \\neq z \\leq w \\geq v$", "x ≤ 3 ≥ y ≠ z ≤ w ≥ v"),
        ("$\\sqrt{x}$", "√x"),
        ("$\\sqrt{x + 1}$", "√(x + 1)"),
        ("$\\frac{a}{b}$", "a⁄b"),
        ("$\\frac{x+1}{2y}$", "(x + 1)/(2y)"),
        ("$\\frac{\\sqrt{2}}{2}$", "√2⁄2"),
        ("$\\pi r^2$", "πr²"),
        ("$x^{10} + x^{-1} + x^23$", "x¹⁰ + x⁻¹ + x²3"),
        ("$\\left(a < b\\right)$", "(a &lt; b)"),
        ("$\\text{area} = \\pi r^2$", "area = πr²"),
        ("$\\left\\{x\\right\\}$", "{x}"),
        ("$\\lessdot x$", "⋖ x"),
    ],
)
def test_math_unicode(latex: str, expected: str) -> None:
    assert markdown_to_mrkdwn(latex) == expected


@pytest.mark.parametrize(
    "text",
    [
        "It costs $5 and $10 in total",
        "between $5-$10 each",
        "$1,000 - $2,000 range",
        "pay $20 now",
        "from $5M to $10M",
    ],
)
def test_currency_is_not_math(text: str) -> None:
    assert markdown_to_mrkdwn(text) == text


def test_escaped_dollar_is_literal() -> None:
    assert markdown_to_mrkdwn(r"\$x\$ and $y$") == "$x$ and y"


# --------------------------------------------------------------------------------------------
# markdown_to_mrkdwn: blocks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", range(1, 7))
def test_headings(level: int) -> None:
    assert markdown_to_mrkdwn("#" * level + " Step one") == "*Step one*"


def test_heading_inner_bold_and_closing_hashes() -> None:
    assert markdown_to_mrkdwn("## **Step 1**: _subtract_ ##") == "*Step 1: _subtract_*"
    assert markdown_to_mrkdwn("#hashtag and #1 fan") == "#hashtag and #1 fan"


def test_heading_on_its_own_line() -> None:
    assert markdown_to_mrkdwn("intro\n# Title\nbody") == "intro\n*Title*\nbody"


def test_unordered_lists() -> None:
    md = "- one\n* two\n+ three\n  - nested **b**\n    * deeper\n\t+ tabbed"
    assert markdown_to_mrkdwn(md) == ("• one\n• two\n• three\n  ◦ nested *b*\n    ◦ deeper\n    ◦ tabbed")


def test_ordered_lists_kept() -> None:
    md = "1. first *step*\n2. second\n   - detail\n10) tenth"
    assert markdown_to_mrkdwn(md) == "1. first _step_\n2. second\n   ◦ detail\n10) tenth"


def test_task_lists() -> None:
    assert markdown_to_mrkdwn("- [ ] todo\n- [x] done\n  - [X] sub") == ("☐ todo\n☑ done\n  ☑ sub")


def test_blockquote_keeps_leading_gt() -> None:
    assert markdown_to_mrkdwn("> quoted **b** a > b\n>> nested\n>\n> - item") == (
        "> quoted *b* a &gt; b\n> nested\n>\n> • item"
    )


@pytest.mark.parametrize("rule", ["---", "***", "___", "- - -", "* * *", "------"])
def test_horizontal_rule(rule: str) -> None:
    assert markdown_to_mrkdwn(f"above\n\n{rule}\n\nbelow") == "above\n\n──────────\n\nbelow"


def test_code_fence_language_dropped_and_content_verbatim() -> None:
    md = (
        "Run:\n\n```python\n"
        "def f(x_1, y_2):\n"
        "    return x_1*y_2  # **not bold** [a](b) $x$\n"
        "\n"
        "\n"
        "\n"
        "print(1 < 2 & 3 > 2)\n"
        "```\n"
        "after **b**"
    )
    assert markdown_to_mrkdwn(md) == (
        "Run:\n\n```\n"
        "def f(x_1, y_2):\n"
        "    return x_1*y_2  # **not bold** [a](b) $x$\n"
        "\n"
        "\n"
        "\n"
        "print(1 &lt; 2 &amp; 3 &gt; 2)\n"
        "```\n"
        "after *b*"
    )


def test_code_fence_tilde_indented_and_unclosed() -> None:
    assert markdown_to_mrkdwn("1. step\n   ~~~\n   x = 1\n     y\n   ~~~") == (
        "1. step\n```\nx = 1\n  y\n```"
    )
    assert markdown_to_mrkdwn("```js\nlet a = 1;") == "```\nlet a = 1;\n```"
    assert markdown_to_mrkdwn("a\n```\n```\nb") == "a\nb"


def test_one_line_triple_backticks_is_inline_code() -> None:
    assert markdown_to_mrkdwn("run ```ls -l``` now") == "run `ls -l` now"


def test_table_becomes_aligned_code_block() -> None:
    md = (
        "| Step | Equation | Note |\n"
        "|:-----|:--------:|-----:|\n"
        "| 1 | $3x = 3$ | **subtract** |\n"
        "| 22 | `x = 1` | a \\| b & c |\n"
        "\n"
        "Done."
    )
    assert markdown_to_mrkdwn(md) == (
        "```\n"
        "Step | Equation |      Note\n"
        "-----+----------+----------\n"
        "1    |  3x = 3  |  subtract\n"
        "22   |  x = 1   | a | b &amp; c\n"
        "```\n"
        "\n"
        "Done."
    )


def test_table_without_outer_pipes_and_ragged_rows() -> None:
    md = "a | b\n--|--\n1 | 2 | 3\n|only|\nx"
    assert markdown_to_mrkdwn(md) == "```\na    | b\n-----+--\n1    | 2\nonly |\n```\nx"


def test_not_a_table() -> None:
    assert markdown_to_mrkdwn("a | b\nplain") == "a | b\nplain"


def test_blank_lines_collapsed_outside_code() -> None:
    assert markdown_to_mrkdwn("\n\n\na\n\n\n\n\nb\n\n \nc\n\n\n") == "a\n\nb\n\nc"


def test_crlf_input() -> None:
    assert markdown_to_mrkdwn("**a**\r\n\r\n- b\r\n") == "*a*\n\n• b"


def test_private_use_placeholder_chars_in_input_are_dropped() -> None:
    assert markdown_to_mrkdwn("a\ue0000\ue001 **b**") == "a0 *b*"


# --------------------------------------------------------------------------------------------
# strip_sandbox_links
# --------------------------------------------------------------------------------------------


def test_sandbox_markdown_link() -> None:
    out = strip_sandbox_links("See [weekly_cases.png](sandbox:/mnt/data/weekly_cases.png).")
    assert out == "See **weekly_cases.png** (attached below)."
    assert markdown_to_mrkdwn(out) == "See *weekly_cases.png* (attached below)."


def test_sandbox_image_link() -> None:
    out = strip_sandbox_links("![Weekly cases](sandbox:/mnt/data/weekly_cases.png)")
    assert out == "**weekly_cases.png** (attached below)"


def test_sandbox_bare_url() -> None:
    out = strip_sandbox_links("Saved to sandbox:/mnt/data/weekly_cases.png, enjoy")
    assert out == "Saved to **weekly_cases.png** (attached below), enjoy"


def test_sandbox_uploaded_titles_and_odd_forms() -> None:
    uploaded = {"chart.png": "Cases per month"}
    md = (
        "[Download it](sandbox:/mnt/data/chart.png) or "
        '[x](<sandbox:/mnt/data/my%20plot.png> "t") or '
        "(sandbox:/mnt/data/chart.png)"
    )
    assert strip_sandbox_links(md, uploaded) == (
        "**Cases per month** (attached below) or "
        "**my plot.png** (attached below) or "
        "(**Cases per month** (attached below))"
    )


def test_sandbox_in_code_only_names_the_file() -> None:
    md = "Open `sandbox:/mnt/data/a.csv`.\n```\nopen('sandbox:/mnt/data/a.csv')\n```"
    assert strip_sandbox_links(md) == "Open `a.csv`.\n```\nopen('a.csv')\n```"


def test_sandbox_never_left_in_output() -> None:
    md = (
        "[a](sandbox:/mnt/data/a.png) ![b](SANDBOX:/mnt/data/b.png) sandbox:/mnt/data/c.png\n"
        "`sandbox:/mnt/data/d.png`\n```\nsandbox:/mnt/data/e.png\n```"
    )
    out = strip_sandbox_links(md)
    assert "sandbox:" not in out.lower()
    for name in "abcde":
        assert f"{name}.png" in out
    assert "sandbox:" not in "".join(format_reply(md)).lower()


def test_no_sandbox_links_is_identity() -> None:
    md = "plain [link](https://x.example) and `code`\n```\ncode\n```"
    assert strip_sandbox_links(md) == md


# --------------------------------------------------------------------------------------------
# split_message
# --------------------------------------------------------------------------------------------


def test_split_empty() -> None:
    assert split_message("") == []
    assert split_message(" \n\n \t\n") == []


def test_split_short_message_is_one_chunk() -> None:
    assert split_message("\n\nhello *world*\n\n") == ["hello *world*"]


def test_split_rejects_tiny_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        split_message("abc", limit=5)


def test_split_prefers_paragraph_boundaries() -> None:
    paragraphs = [
        " ".join(["alpha"] * 166),  # 995 chars
        "\n".join(["beta line"] * 150),  # 1499 chars, many line breaks
        " ".join(["gamma"] * 166),
    ]
    text = "\n\n".join(paragraphs)
    chunks = split_message(text)
    assert chunks == [paragraphs[0] + "\n\n" + paragraphs[1], paragraphs[2]]


def test_split_falls_back_to_lines_then_words() -> None:
    text = "\n".join(f"line number {i:03d}" for i in range(400))
    chunks = split_message(text, limit=500)
    assert all(len(c) <= 500 for c in chunks)
    assert all(re.fullmatch(r"(line number \d{3}\n)*line number \d{3}", c) for c in chunks)
    assert "\n".join(chunks) == text

    words = " ".join(f"w{i:04d}" for i in range(1000))
    chunks = split_message(words, limit=500)
    assert all(len(c) <= 500 for c in chunks)
    assert " ".join(chunks) == words


def test_split_small_leading_paragraph_is_not_a_tiny_chunk() -> None:
    text = "*Title*\n\n" + "\n".join(["some line of text"] * 300)
    chunks = split_message(text)
    assert len(chunks[0]) > SLACK_CHUNK_LIMIT // 3
    assert _non_ws("".join(chunks)) == _non_ws(text)


@pytest.mark.parametrize("limit", [SLACK_CHUNK_LIMIT, 1000, 257])
def test_split_chunks_fit_and_preserve_content(limit: int) -> None:
    text = markdown_to_mrkdwn(
        "\n\n".join(
            f"## Part {i}\n\nSome **bold** text about <@U0ALICE> & <https://x.example/{i}|a link "
            f"with words> and a long sentence {'blah ' * (i * 7)}\n\n- item {i}\n- item two"
            for i in range(60)
        )
    )
    chunks = split_message(text, limit)
    assert len(chunks) > 1
    for chunk in chunks:
        assert 0 < len(chunk) <= limit
        assert chunk.strip() == chunk
        assert chunk.count("<") == chunk.count(">")  # no <link|label> token cut in two
        assert not re.search(r"&(?!amp;|lt;|gt;)", chunk)  # no entity cut in two
    assert _non_ws("".join(chunks)) == _non_ws(text)


def test_split_huge_code_block_is_refenced() -> None:
    body = "\n".join(f"value_{i:04d} = compute({i}) & x < y" for i in range(300))
    body = escape_mrkdwn(body)
    assert len(body) > 9000
    text = f"{FENCE}\n{body}\n{FENCE}"
    chunks = split_message(text)
    assert len(chunks) >= 3
    for chunk in chunks:
        assert len(chunk) <= SLACK_CHUNK_LIMIT
        assert chunk.startswith(FENCE + "\n")
        assert chunk.endswith("\n" + FENCE)
        assert chunk.count(FENCE) == 2
        assert chunk[4:-4].strip()
    inner = "\n".join(chunk[4:-4] for chunk in chunks)
    assert inner == body  # split on line boundaries only


def test_split_code_block_with_prose_around() -> None:
    code = "\n".join(f"print({i})" for i in range(600))
    text = f"Intro paragraph.\n\n{FENCE}\n{code}\n{FENCE}\n\nOutro paragraph."
    chunks = split_message(text, limit=1000)
    assert chunks[0].startswith("Intro paragraph.\n\n```\nprint(0)")
    assert chunks[-1].endswith("```\n\nOutro paragraph.") or chunks[-1] == "Outro paragraph."
    for chunk in chunks:
        assert len(chunk) <= 1000
        assert chunk.count(FENCE) % 2 == 0
        assert "```\n```" not in chunk  # never an empty code block
    rejoined = "".join(chunks).replace(FENCE, "")
    assert _non_ws(rejoined) == _non_ws(text.replace(FENCE, ""))


def test_split_single_long_word_is_hard_split() -> None:
    word = "x" * 5000
    assert split_message(word) == ["x" * 3000, "x" * 2000]
    chunks = split_message(f"short intro\n\n{word}\n\nend")
    assert all(len(c) <= SLACK_CHUNK_LIMIT for c in chunks)
    assert _non_ws("".join(chunks)) == _non_ws(f"short intro{word}end")


def test_split_long_code_line_is_hard_split_and_refenced() -> None:
    chunks = split_message(f"{FENCE}\n{'y' * 5000}\n{FENCE}")
    assert [len(c) for c in chunks] == [3000, 2016]
    assert all(c.startswith("```\ny") and c.endswith("y\n```") for c in chunks)


def test_split_never_cuts_entities() -> None:
    text = "&amp;" * 1000
    chunks = split_message(text, limit=1001)
    assert all(len(c) <= 1001 and c.endswith("&amp;") for c in chunks)
    assert "".join(chunks) == text


def test_split_no_whitespace_only_chunks() -> None:
    text = "a\n\n" + " " * 5000 + "\n\n" + "b"
    assert split_message(text, limit=100) == ["a", "b"]
    assert split_message("```\n" + " " * 500 + "\nx\n```", limit=100) == ["```\nx\n```"]
    assert split_message("```\n" + "\n" * 500 + "x\n```", limit=100) == ["```\nx\n```"]


# --------------------------------------------------------------------------------------------
# format_reply end to end
# --------------------------------------------------------------------------------------------

MODEL_ANSWER = r"""### Solving 3x + 11 = 14

We want to get **x** by itself. Treat the equation as a balance: do the same to both sides.

1. Subtract 11 from both sides: $3x + 11 - 11 = 14 - 11$, so $3x = 3$.
2. Divide both sides by 3:

$$
x = \frac{3}{3} = 1
$$

**Check:** $3 \cdot 1 + 11 = 14$ ✓

You can also let Python do it:

```python
from sympy import Eq, solve, symbols

x = symbols("x")
print(solve(Eq(3*x + 11, 14), x))  # prints [1]
```

I plotted both sides, $y = 3x + 11$ and $y = 14$; they cross where x = 1:

![Both sides of the equation](sandbox:/mnt/data/both_sides.png)

You can [download the chart](sandbox:/mnt/data/both_sides.png) too.
"""

EXPECTED_REPLY = """*Solving 3x + 11 = 14*

We want to get *x* by itself. Treat the equation as a balance: do the same to both sides.

1. Subtract 11 from both sides: 3x + 11 − 11 = 14 − 11, so 3x = 3.
2. Divide both sides by 3:

```
x = 3⁄3 = 1
```

*Check:* 3 · 1 + 11 = 14 ✓

You can also let Python do it:

```
from sympy import Eq, solve, symbols

x = symbols("x")
print(solve(Eq(3*x + 11, 14), x))  # prints [1]
```

I plotted both sides, y = 3x + 11 and y = 14; they cross where x = 1:

*Both sides of 3x + 11 = 14* (attached below)

You can *Both sides of 3x + 11 = 14* (attached below) too."""


def test_format_reply_worked_solution() -> None:
    uploaded = {"both_sides.png": "Both sides of 3x + 11 = 14"}
    assert format_reply(MODEL_ANSWER, uploaded) == [EXPECTED_REPLY]


def test_format_reply_worked_solution_split() -> None:
    chunks = format_reply(MODEL_ANSWER, limit=400)
    # Cut at the last blank line that fits, so the Python block stays whole in chunk 2.
    assert chunks[0] == EXPECTED_REPLY[: EXPECTED_REPLY.index("\n\n```\nfrom sympy")]
    assert chunks[1].startswith("```\nfrom sympy")
    for chunk in chunks:
        assert len(chunk) <= 400
        assert chunk.count(FENCE) % 2 == 0
        assert "sandbox:" not in chunk
    assert "*both_sides.png* (attached below)" in "\n".join(chunks)


def test_format_reply_empty() -> None:
    assert format_reply("") == []
    assert format_reply("\n\n") == []


def test_a_live_answer_gets_only_the_glue_slack_lacks() -> None:
    from bot.formatting import live_markdown, stable_end

    text = "Use `2**10` and x_1*y_2 with a < b & c; <!here> see [plot.png](sandbox:/mnt/data/plot.png) "
    shown = live_markdown(text[: stable_end(text)])
    assert "`2**10`" in shown and "x_1*y_2" in shown and "a < b & c" in shown  # Slack renders Markdown
    assert "<!here>" not in shown and "sandbox:" not in shown and "plot.png" in shown
    assert live_markdown("so \\(x^2\\) ") == "so x² "


def test_a_live_answer_holds_back_what_has_not_closed_yet() -> None:
    from bot.formatting import stable_end

    assert stable_end("see [the chart](sandbox:/mnt/da") == len("see ")
    assert stable_end("so \\(x^2 + ") == len("so ")
    assert stable_end("half a wo") == len("half a ")
