"""The ``gemini`` kind: Gemini Batch Mode and one-off generateContent calls (``client.py``,
through the ``google-genai`` SDK), what a batch result means (``outcomes.py``), the
generateContent request format (``formats.py``) and its facts."""

from __future__ import annotations

from providers.base import Provider
from providers.gemini.formats import GENERATE
from providers.gemini.outcomes import classify
from providers.kind import Kind
from streams.kinds import KindFacts, UsageKeys
from streams.provider_config import ProviderSettings

__all__ = ["FACTS", "KIND", "classify"]

FACTS = KindFacts(
    name="gemini",
    endpoints=(GENERATE,),
    # Inline requests up to 20 MB, a JSONL input file (Files API) up to 2 GB above that.
    limits=(100_000, 2 * 1000 * 1000 * 1000),
    # ``usageMetadata``: the prompt (cached part included) and tool-use prompts are input;
    # candidates and thoughts, billed as output, are output.
    usage=UsageKeys(
        input=("promptTokenCount", "toolUsePromptTokenCount"),
        output=("candidatesTokenCount", "thoughtsTokenCount"),
        at="usageMetadata",
    ),
    flex=True,
    batch_metadata=False,
    batches="Gemini batches",
    settings=frozenset({"inline_bytes"}),
    # USD per million input / output tokens, real-time, late 2026.
    prices={"gemini-2.5-pro": (1.25, 10.00), "gemini-2.5-flash": (0.30, 2.50), "gemini-2.5-flash-lite": (0.10, 0.40)},
)


def _open(name: str, settings: ProviderSettings) -> Provider:
    from providers.gemini.client import GeminiProvider  # the SDK is slow to import

    return GeminiProvider(name, settings)


KIND = Kind(FACTS, open=_open, classify=classify)
