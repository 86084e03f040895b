"""What a result cost: list prices per model, and the share of them each serving path pays.

Prices are USD per million tokens at the real-time (standard) price. A batch pays ``batch``
times that, a flex call ``flex`` times it (half, for every provider that sells them), a
standard call all of it. The list prices of each kind's common models are its facts
(``KindFacts.prices``, in ``providers/<kind>/__init__.py``); a
configuration's ``pricing:`` section overrides them or adds models (for a fine-tuned model, a
deployment name, or a price change). A dated snapshot (``gpt-5-mini-2025-08-07``,
``claude-sonnet-4-5-20250929``) is priced as its model; a model without a price gets no
``cost``. Cached-input discounts are not modelled: cached tokens are priced as input, so
``cost`` is an upper bound there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from streams.kinds import KindFacts
from streams.provider_config import Frozen

Path = Literal["batch", "flex", "standard"]


class ModelPrice(Frozen):
    #: USD per million input tokens, real-time.
    input: float = Field(ge=0)
    #: USD per million output tokens, real-time.
    output: float = Field(0.0, ge=0)
    #: Share of the real-time price a batch pays.
    batch: float = Field(0.5, ge=0)
    #: Share of the real-time price a flex call pays.
    flex: float = Field(0.5, ge=0)


class Cost(BaseModel):
    """What one result cost (USD): ``paid`` at the path that served it, ``realtime`` at the standard price."""

    model_config = ConfigDict(frozen=True)

    paid: float
    realtime: float


class Pricing:
    """Prices by model: the list prices of ``kinds`` with the configuration's ``pricing:`` over them."""

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None, *, kinds: Iterable[KindFacts]) -> None:
        listed = {name: ModelPrice(input=price[0], output=price[1]) for facts in kinds
                  for name, price in facts.prices.items()}  # fmt: skip
        self.prices = {**listed, **(overrides or {})}
        #: Longest names first, so ``gpt-5-mini-2025-08-07`` is ``gpt-5-mini``, not ``gpt-5``.
        self._names = sorted(self.prices, key=len, reverse=True)
        self._resolved: dict[str, ModelPrice | None] = {}

    def price(self, model: str) -> ModelPrice | None:
        if model not in self._resolved:  # once per model name, not once per result
            snapshot_of = (n for n in self._names if model.startswith(f"{n}-") and model[len(n) + 1 :][:1].isdigit())
            name = model if model in self.prices else next(snapshot_of, None)
            self._resolved[model] = self.prices[name] if name is not None else None
        return self._resolved[model]

    def cost(self, model: str, input_tokens: int, output_tokens: int, path: Path) -> Cost | None:
        amounts = self.amounts(model, input_tokens, output_tokens, path)
        return None if amounts is None else Cost(paid=amounts[0], realtime=amounts[1])

    def amounts(self, model: str, input_tokens: int, output_tokens: int, path: Path) -> tuple[float, float] | None:
        """(paid, realtime) in USD, as :meth:`cost` gives them; None when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        realtime = (input_tokens * price.input + output_tokens * price.output) / 1_000_000
        share = price.batch if path == "batch" else price.flex if path == "flex" else 1.0
        return round(realtime * share, 9), round(realtime, 9)
