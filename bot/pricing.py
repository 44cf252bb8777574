"""Token prices per model, for the estimated cost `/tutor usage` shows. Edit this table when
OpenAI's prices change (https://developers.openai.com/api/docs/pricing); a model missing from it
shows its tokens without a cost.

The cost is an estimate: code-interpreter container time, file storage and vector-store storage
are billed separately and are not in a response's usage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from bot.config import DEFAULT_MODEL


@dataclass(frozen=True)
class Price:
    """US dollars per 1M tokens."""

    input: Decimal
    cached_input: Decimal
    output: Decimal


def _price(input_: str, output: str) -> Price:
    # Our price sheet (openai.md §3, 2026-12) lists no cached-input price: a tenth of the input's is
    # assumed, as OpenAI's recent models charge.
    return Price(Decimal(input_), Decimal(input_) / 10, Decimal(output))


#: Checked 2026-12-02 against openai.md §3.
PRICES: dict[str, Price] = {
    DEFAULT_MODEL: _price("0.10", "0.50"),  # gpt-6-luna
    "gpt-6.1-terra": _price("1", "5"),
    "gpt-6.1-sol": _price("2", "10"),
    "gpt-6.2-sol": _price("2", "10"),
    "gpt-6-astra": _price("10", "50"),
    "gpt-6.2-astra": _price("8", "40"),
}
MILLION = Decimal(1_000_000)
SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def estimated_cost(
    model: str, *, input_tokens: int, cached_tokens: int, output_tokens: int
) -> Decimal | None:
    """US dollars for these tokens of `model` (cached tokens are part of `input_tokens`); None
    when the model's price is unknown."""
    price = PRICES.get(model) or PRICES.get(_without_snapshot(model))
    if price is None:
        return None
    cached = min(cached_tokens, input_tokens)
    return (
        (input_tokens - cached) * price.input + cached * price.cached_input + output_tokens * price.output
    ) / MILLION


def _without_snapshot(model: str) -> str:
    """`gpt-6-luna-2026-10-01` → `gpt-6-luna`: a response may name the dated snapshot that answered."""
    return SNAPSHOT.sub("", model)
