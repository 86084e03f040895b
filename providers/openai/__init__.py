"""The ``openai`` kind: OpenAI's Batch API and one-off calls (``client.py``, through the ``openai``
SDK), what a batch result line means (``outcomes.py``), its endpoints' request formats
(``formats.py``) and its facts. Any OpenAI-compatible server too."""

from __future__ import annotations

from providers.base import Provider
from providers.kind import Kind
from providers.openai.formats import CHAT, EMBEDDINGS, RESPONSES
from providers.openai.outcomes import classify
from streams.kinds import KindFacts, UsageKeys
from streams.provider_config import ProviderSettings

__all__ = ["FACTS", "KIND", "USAGE", "classify"]

#: Chat's prompt/completion tokens, or the Responses API's input/output tokens.
USAGE = UsageKeys(input=("prompt_tokens", "input_tokens"), output=("completion_tokens", "output_tokens"))

FACTS = KindFacts(
    name="openai",
    endpoints=(CHAT, RESPONSES, EMBEDDINGS),
    limits=(50_000, 200 * 1000 * 1000),
    usage=USAGE,
    flex=True,
    settings=frozenset({"organization"}),
    # USD per million input / output tokens, real-time, late 2026.
    prices={
        "gpt-5": (1.25, 10.00), "gpt-5-mini": (0.25, 2.00), "gpt-5-nano": (0.05, 0.40),
        "gpt-5.1": (1.25, 10.00), "gpt-4.1": (2.00, 8.00), "gpt-4.1-mini": (0.40, 1.60),
        "gpt-4.1-nano": (0.10, 0.40), "gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60),
        "o3": (2.00, 8.00), "o4-mini": (1.10, 4.40),
        "text-embedding-3-small": (0.02, 0.0), "text-embedding-3-large": (0.13, 0.0),
    },
)  # fmt: skip


def _open(name: str, settings: ProviderSettings) -> Provider:
    from providers.openai.client import OpenAIProvider  # the SDK's resources, only when configured

    return OpenAIProvider(name, settings)


KIND = Kind(FACTS, open=_open, classify=classify)
