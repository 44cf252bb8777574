"""How a model's math reads in Slack: inline LaTeX as Unicode text, display equations as
:class:`DisplayMath` parts with a Unicode (or LaTeX code block) fallback, money and code untouched."""

from __future__ import annotations

import re

import pytest

from bot.formatting import DisplayMath, escape_mrkdwn, format_answer, format_reply
from bot.prepare import build_instructions
from db.models import Profile


def display(latex: str, *fallback: str) -> DisplayMath:
    return DisplayMath(latex, "```\n" + "\n".join(fallback) + "\n```")


# The four outputs reported in issue 12, first.
ISSUE_CASES: list[tuple[str, list[str | DisplayMath]]] = [
    (
        r"So \( \int_0^1 x^2 \, dx = \left[\frac{x^3}{3}\right]_0^1 = \frac{1}{3} \).",
        ["So ∫₀¹ x² dx = [x³⁄3]₀¹ = ⅓."],
    ),
    (
        r"The roots are \( x = \frac{-b \pm \sqrt{b^2-4ac}}{2a} \).",
        ["The roots are x = (−b ± √(b² − 4ac))/(2a)."],
    ),
    (
        r"We know \( \sum_{n=1}^{\infty} \frac{1}{n^2} = \frac{\pi^2}{6} \).",
        ["We know ∑ₙ₌₁^∞ 1⁄n² = π²⁄6."],
    ),
    (
        "Let\n\\[\n\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}\n\\]",
        ["Let", display(r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", "⎛1  2⎞", "⎝3  4⎠")],
    ),
]

INLINE_CASES: list[tuple[str, str]] = [
    (r"Solve $x^2 - 5x + 6 = 0$ by factoring: $(x - 2)(x - 3) = 0$.",
     "Solve x² − 5x + 6 = 0 by factoring: (x − 2)(x − 3) = 0."),
    (r"So $x = 2$ or $x = 3$.", "So x = 2 or x = 3."),
    (r"The discriminant is \(\Delta = b^2 - 4ac\).", "The discriminant is Δ = b² − 4ac."),
    (r"Euler: \(e^{i\pi} + 1 = 0\), and \(e^{ix} = \cos x + i \sin x\).",
     "Euler: e^(iπ) + 1 = 0, and eⁱˣ = cos x + i sin x."),
    (r"Newton's method: \(x_{n+1} = x_n - \frac{f(x_n)}{f'(x_n)}\).",
     "Newton's method: xₙ₊₁ = xₙ − f(xₙ)⁄f′(xₙ)."),
    (r"The sequence \(a_{k+1} = 2a_k\) doubles.", "The sequence aₖ₊₁ = 2aₖ doubles."),
    (r"Here \(y_{max}\) is the peak.", "Here yₘₐₓ is the peak."),
    (r"Water is \(\mathrm{H_2O}\) and carbon dioxide is $\text{CO}_2$.",
     "Water is H₂O and carbon dioxide is CO₂."),
    (r"Burning methane: \(\mathrm{CH_4 + 2O_2 \to CO_2 + 2H_2O}\).",
     "Burning methane: CH₄ + 2O₂ → CO₂ + 2H₂O."),
    (r"For all \(x \in \mathbb{R}\), \(x^2 \ge 0\).", "For all x ∈ ℝ, x² ≥ 0."),
    (r"Take \(\epsilon > 0\) with \(|x - a| < \delta\).", "Take ϵ &gt; 0 with |x − a| &lt; δ."),
    # No Unicode subscript for "→": the ASCII fallback goes in a code span, where "_" can't italicise.
    (r"\(\lim_{x \to 0} \frac{\sin x}{x} = 1\)", "`lim_(x → 0) (sin x)/x = 1`"),
    (r"The derivative: \(\frac{d}{dx} x^3 = 3x^2\), so \(\frac{dy}{dx} = 3x^2\).",
     "The derivative: d/dx x³ = 3x², so dy/dx = 3x²."),
    (r"Simplify \(\sqrt{\frac{a}{b}} = \frac{\sqrt{a}}{\sqrt{b}}\).", "Simplify √(a⁄b) = √a⁄√b."),
    (r"Then \(\sqrt{\frac{x+1}{x-1}}\) is defined for \(x > 1\).",
     "Then √((x + 1)/(x − 1)) is defined for x &gt; 1."),
    (r"\(\sqrt[3]{27} = 3\) and \(\sqrt[n]{x} = x^{1/n}\).", "∛27 = 3 and ⁿ√x = x^(1/n)."),
    (r"Half is \(\frac{1}{2}\) and \(\tfrac{3}{4} = 0.75\).", "Half is ½ and ¾ = 0.75."),
    (r"\(\frac{a+b}{2a}\)", "(a + b)/(2a)"),
    (r"The area is \(A = \pi r^2\) and \(\text{circumference} = 2\pi r\).",
     "The area is A = πr² and circumference = 2πr."),
    (r"\(\sin^2\theta + \cos^2\theta = 1\)", "sin²θ + cos²θ = 1"),
    (r"\(a \cdot b \le |a||b|\), \(a \ne 0\), \(x \approx 3.14\)", "a · b ≤ |a||b|, a ≠ 0, x ≈ 3.14"),
    (r"\(A \cup B \subseteq C\) and \(A \cap B = \emptyset\)", "A ∪ B ⊆ C and A ∩ B = ∅"),
    (r"\(f: \mathbb{R} \to \mathbb{R}\), \(p \Rightarrow q\)", "f: ℝ → ℝ, p ⇒ q"),
    (r"An angle of \(90^\circ\) is right.", "An angle of 90° is right."),
    (r"\(\binom{5}{2} = 10\)", "C(5, 2) = 10"),
    (r"\(17 \equiv 2 \pmod{5}\)", "17 ≡ 2 (mod 5)"),
    (r"Velocity \(\vec{v} = (3, 4)\) has \(\|\vec{v}\| = 5\).", "Velocity v⃗ = (3, 4) has ‖v⃗‖ = 5."),
    (r"So $2^{10} = 1024$ and $10^{-3} = 0.001$.", "So 2¹⁰ = 1024 and 10⁻³ = 0.001."),
    # "*" would be bold in Slack: it becomes the asterisk operator.
    (r"Write \(x_1 * y_2\) carefully.", "Write x₁ ∗ y₂ carefully."),
    (r"If \(a < b\) and \(b > c\) then…", "If a &lt; b and b &gt; c then…"),
    # An unknown command: the LaTeX stays, in a code span, rather than half converted.
    (r"Here \(\frob{x} + 1\) is undefined.", r"Here `\frob{x} + 1` is undefined."),
    # Money is not math.
    ("It costs $5 and $10 in total.", "It costs $5 and $10 in total."),
    ("A ticket is $12.50, so 4 tickets cost $50.", "A ticket is $12.50, so 4 tickets cost $50."),
    ("The budget went from $1,000 to $2,500 — an increase of $1,500.",
     "The budget went from $1,000 to $2,500 — an increase of $1,500."),
    (r"You earn $15/hour; for $x$ hours that is $15x$ dollars.",
     "You earn $15/hour; for x hours that is 15x dollars."),
    # Code is verbatim.
    ("Run `echo $HOME` and `printf '%s\\n' \\frac`.", "Run `echo $HOME` and `printf '%s\\n' \\frac`."),
    ("```python\nprice = f\"${cost:.2f}\"\nlatex = r\"\\frac{a}{b} $x$ \\(y\\)\"\n```",
     "```\nprice = f\"${cost:.2f}\"\nlatex = r\"\\frac{a}{b} $x$ \\(y\\)\"\n```"),
    ("```latex\n\\[ x^2 \\]\n$$ y $$\n\\begin{align} a &= b \\end{align}\n```",
     "```\n\\[ x^2 \\]\n$$ y $$\n\\begin{align} a &amp;= b \\end{align}\n```"),
]  # fmt: skip

DISPLAY_CASES: list[tuple[str, list[str | DisplayMath]]] = [
    (
        "The formula:\n\n$$x = \\frac{-b \\pm \\sqrt{b^2 - 4ac}}{2a}$$\n\nPlug in.",
        [
            "The formula:",
            display(r"x = \frac{-b \pm \sqrt{b^2 - 4ac}}{2a}", "x = (−b ± √(b² − 4ac))/(2a)"),
            "Plug in.",
        ],
    ),
    ("\\[\n\\int_0^{\\pi} \\sin x \\, dx = 2\n\\]",
     [display(r"\int_0^{\pi} \sin x \, dx = 2", "∫₀^π sin x dx = 2")]),
    ("$$\n\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}\n$$",
     [display(r"\sum_{k=1}^{n} k = \frac{n(n+1)}{2}", "∑ₖ₌₁ⁿ k = n(n + 1)⁄2")]),
    (
        "\\begin{align}\n2x + 3 &= 7 \\\\\n2x &= 4 \\\\\nx &= 2\n\\end{align}",
        [display("\\begin{align}\n2x + 3 &= 7 \\\\\n2x &= 4 \\\\\nx &= 2\n\\end{align}",
                 "2x + 3 = 7", "    2x = 4", "     x = 2")],
    ),
    (
        "\\[\n\\begin{aligned}\n(x+1)^2 &= x^2 + 2x + 1 \\\\\n&= (x + 1)(x + 1)\n\\end{aligned}\n\\]",
        [display("\\begin{aligned}\n(x+1)^2 &= x^2 + 2x + 1 \\\\\n&= (x + 1)(x + 1)\n\\end{aligned}",
                 "(x + 1)² = x² + 2x + 1", "         = (x + 1)(x + 1)")],
    ),
    (
        "Solve the system\n\\[\n\\begin{cases} x + y = 5 \\\\ x - y = 1 \\end{cases}\n\\]",
        ["Solve the system",
         display(r"\begin{cases} x + y = 5 \\ x - y = 1 \end{cases}", "⎧ x + y = 5", "⎨", "⎩ x − y = 1")],
    ),
    (
        "$$f(x) = \\begin{cases} x^2 & \\text{if } x \\ge 0 \\\\ -x & \\text{otherwise} \\end{cases}$$",
        [display(r"f(x) = \begin{cases} x^2 & \text{if } x \ge 0 \\ -x & \text{otherwise} \end{cases}",
                 "       ⎧ x²   if x ≥ 0", "f(x) = ⎨", "       ⎩ −x   otherwise")],
    ),
    (
        "\\[ A = \\begin{bmatrix} 1 & 0 & 0 \\\\ 0 & 1 & 0 \\\\ 0 & 0 & 1 \\end{bmatrix} \\]",
        [display(r"A = \begin{bmatrix} 1 & 0 & 0 \\ 0 & 1 & 0 \\ 0 & 0 & 1 \end{bmatrix}",
                 "    ⎡1  0  0⎤", "A = ⎢0  1  0⎥", "    ⎣0  0  1⎦")],
    ),
    (
        "\\[ \\det \\begin{vmatrix} a & b \\\\ c & d \\end{vmatrix} = ad - bc \\]",
        [display(r"\det \begin{vmatrix} a & b \\ c & d \end{vmatrix} = ad - bc",
                 "det |a  b| = ad − bc", "    |c  d|")],
    ),
    ("\\begin{equation}\nE = mc^2\n\\end{equation}", [display("E = mc^2", "E = mc²")]),
    # Neither mathtext nor Unicode shows an array: the LaTeX itself, in a code block.
    (
        "\\[ \\begin{array}{c|c} x & y \\\\ 1 & 2 \\end{array} \\]",
        [display(r"\begin{array}{c|c} x & y \\ 1 & 2 \end{array}",
                 r"\begin{array}{c|c} x &amp; y \\ 1 &amp; 2 \end{array}")],
    ),
    (
        "\\[ \\lim_{n \\to \\infty} \\left(1 + \\frac{1}{n}\\right)^n = e \\]",
        [display(r"\lim_{n \to \infty} \left(1 + \frac{1}{n}\right)^n = e", "lim_(n → ∞) (1 + 1⁄n)ⁿ = e")],
    ),
    (
        "1. Subtract 3:\n   \\[ 2x = 4 \\]\n2. Divide by 2:\n   \\[ x = 2 \\]",
        ["1. Subtract 3:", display("2x = 4", "2x = 4"), "2. Divide by 2:", display("x = 2", "x = 2")],
    ),
]  # fmt: skip

TABLE: list[tuple[str, list[str | DisplayMath]]] = [
    *ISSUE_CASES,
    *((markdown, [expected]) for markdown, expected in INLINE_CASES),
    *DISPLAY_CASES,
]


def test_the_table_is_big_enough() -> None:
    assert len(TABLE) >= 40


@pytest.mark.parametrize(("markdown", "expected"), ISSUE_CASES)
def test_issue_12_reports_read_like_a_textbook(markdown: str, expected: list[str | DisplayMath]) -> None:
    assert format_answer(markdown) == expected


@pytest.mark.parametrize(("markdown", "expected"), TABLE)
def test_model_output_as_slack_shows_it(markdown: str, expected: list[str | DisplayMath]) -> None:
    assert format_answer(markdown) == expected


_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)
_RAW = ("\\frac", "\\sqrt", "\\(", "\\[", "$$", "&amp;", "_{")


@pytest.mark.parametrize(("markdown", "expected"), TABLE)
def test_no_raw_latex_outside_code(markdown: str, expected: list[str | DisplayMath]) -> None:
    for part in format_answer(markdown):
        if isinstance(part, DisplayMath):
            if part.fallback != display(*[escape_mrkdwn(part.latex)] * 2).fallback:  # the LaTeX itself
                assert not any(raw in part.fallback for raw in _RAW), part
            continue
        prose = _CODE.sub("", part)
        assert not any(raw in prose for raw in _RAW), part


@pytest.mark.parametrize(("markdown", "expected"), TABLE)
def test_without_images_each_equation_is_its_fallback(
    markdown: str, expected: list[str | DisplayMath]
) -> None:
    folded = format_answer(markdown, images=False)
    assert folded == format_reply(markdown)
    assert len(folded) == 1
    pos = 0
    for part in expected:
        pos = folded[0].index(part.fallback if isinstance(part, DisplayMath) else part, pos)


def test_display_equations_split_the_text_in_order() -> None:
    parts = format_answer("First\n\n$$a = 1$$\n\nmiddle\n\n\\[ b = 2 \\]\n\nlast")
    assert parts == ["First", display("a = 1", "a = 1"), "middle", display("b = 2", "b = 2"), "last"]


def test_long_text_around_an_equation_is_split_into_chunks() -> None:
    prose = "word " * 1000
    parts = format_answer(f"{prose}\n\n$$x = 1$$\n\n{prose}", limit=1000)
    assert [type(p) for p in parts].count(DisplayMath) == 1
    assert all(len(p) <= 1000 for p in parts if isinstance(p, str))
    assert parts.index(display("x = 1", "x = 1")) == len(parts) // 2


def test_a_broadcast_inside_math_pings_nobody() -> None:
    assert format_answer(r"\(x = \text{@here}\)") == ["x = @\u2060here"]


def test_the_model_is_told_how_math_is_shown() -> None:
    profile = Profile(slug="math", name="Math Tutor", instructions="You are a math tutor.")
    instructions = build_instructions(profile, display_name="Ann")
    assert r"\(" in instructions
    assert r"\[" in instructions
    assert "$5 always means money" in instructions
