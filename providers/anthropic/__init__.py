"""The ``anthropic`` kind: Message Batches and one-off Messages calls (``client.py``, through the
``anthropic`` SDK), and what a batch result line means (``outcomes.py``)."""

from __future__ import annotations

from providers.anthropic.outcomes import classify
from providers.base import Provider
from providers.kind import Kind
from streams.provider_config import ProviderSettings

__all__ = ["KIND", "classify"]


def _open(name: str, settings: ProviderSettings) -> Provider:
    from providers.anthropic.client import AnthropicProvider  # the SDK is slow to import

    return AnthropicProvider(name, settings)


KIND = Kind("anthropic", open=_open, classify=classify)
