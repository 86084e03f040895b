"""The ``openai`` kind: OpenAI's Batch API and one-off calls (``client.py``, through the ``openai``
SDK), and what a batch result line means (``outcomes.py``). Any OpenAI-compatible server too."""

from __future__ import annotations

from providers.base import Provider
from providers.kind import Kind
from providers.openai.outcomes import classify
from streams.provider_config import ProviderSettings

__all__ = ["KIND", "classify"]


def _open(name: str, settings: ProviderSettings) -> Provider:
    from providers.openai.client import OpenAIProvider  # the SDK's resources, only when configured

    return OpenAIProvider(name, settings)


KIND = Kind("openai", open=_open, classify=classify)
