"""The ``anthropic`` kind: Message Batches and one-off Messages calls (``client.py``, through the
``anthropic`` SDK), what a batch result line means (``outcomes.py``), the Messages request format
(``formats.py``) and its facts."""

from __future__ import annotations

from providers.anthropic.formats import MESSAGES
from providers.anthropic.outcomes import classify
from providers.base import Provider
from providers.kind import Kind
from streams.kinds import KindFacts, UsageKeys
from streams.provider_config import ProviderSettings

__all__ = ["FACTS", "KIND", "classify"]

FACTS = KindFacts(
    name="anthropic",
    endpoints=(MESSAGES,),
    limits=(100_000, 256 * 1000 * 1000),
    # Cache writes and reads count as input.
    usage=UsageKeys(
        input=("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"), output=("output_tokens",)
    ),
    batch_metadata=False,
    batches="Anthropic message batches",
    # USD per million input / output tokens, real-time, late 2026.
    prices={
        "claude-opus-4-1": (15.00, 75.00), "claude-opus-4-5": (5.00, 25.00), "claude-sonnet-4-5": (3.00, 15.00),
        "claude-sonnet-4": (3.00, 15.00), "claude-haiku-4-5": (1.00, 5.00), "claude-3-5-haiku": (0.80, 4.00),
    },
)  # fmt: skip


def _open(name: str, settings: ProviderSettings) -> Provider:
    from providers.anthropic.client import AnthropicProvider  # the SDK is slow to import

    return AnthropicProvider(name, settings)


KIND = Kind(FACTS, open=_open, classify=classify)
