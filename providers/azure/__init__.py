"""The ``azure`` kind: Azure OpenAI, OpenAI's Batch API under a resource endpoint, an API version
and deployment names (``client.py``); its result lines read as OpenAI's."""

from __future__ import annotations

from providers.base import Provider
from providers.kind import Kind
from providers.openai.outcomes import classify
from streams.provider_config import ProviderSettings

__all__ = ["KIND"]


def _open(name: str, settings: ProviderSettings) -> Provider:
    from providers.azure.client import AzureProvider  # the SDK's resources, only when configured

    return AzureProvider(name, settings)


KIND = Kind("azure", open=_open, classify=classify)
