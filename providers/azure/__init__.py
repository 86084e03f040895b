"""The ``azure`` kind: Azure OpenAI, OpenAI's Batch API under a resource endpoint, an API version
and deployment names (``client.py``); its result lines, request formats and usage read as
OpenAI's."""

from __future__ import annotations

from providers.base import Provider
from providers.kind import Kind
from providers.openai import USAGE
from providers.openai.formats import CHAT, EMBEDDINGS
from providers.openai.outcomes import classify
from streams.kinds import KindFacts
from streams.provider_config import ProviderSettings

__all__ = ["FACTS", "KIND"]

FACTS = KindFacts(
    name="azure",
    # The Responses API is not served under an api-version (Azure's "v1 API" is OpenAI-shaped:
    # use kind openai with base_url https://NAME.openai.azure.com/openai/v1/).
    endpoints=(CHAT, EMBEDDINGS),
    limits=(100_000, 200 * 1000 * 1000),
    usage=USAGE,
    requires=(("base_url", "base_url (the resource endpoint)"), ("api_version", "api_version")),
)


def _open(name: str, settings: ProviderSettings) -> Provider:
    from providers.azure.client import AzureProvider  # the SDK's resources, only when configured

    return AzureProvider(name, settings)


KIND = Kind(FACTS, open=_open, classify=classify)
