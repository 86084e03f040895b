"""The ``gemini`` kind: Gemini Batch Mode and one-off generateContent calls (``client.py``,
through the ``google-genai`` SDK), and what a batch result means (``outcomes.py``)."""

from __future__ import annotations

from providers.base import Provider
from providers.gemini.outcomes import classify
from providers.kind import Kind
from streams.provider_config import ProviderSettings

__all__ = ["KIND", "classify"]


def _open(name: str, settings: ProviderSettings) -> Provider:
    from providers.gemini.client import GeminiProvider  # the SDK is slow to import

    return GeminiProvider(name, settings)


KIND = Kind("gemini", open=_open, classify=classify)
