"""Azure OpenAI: OpenAI's Batch API under a resource endpoint, an API version and deployment
names (the pipeline's ``model`` is the deployment), through the ``openai`` SDK's
``AsyncAzureOpenAI``. Batch lines and batches name the endpoint without ``/v1``."""

from __future__ import annotations

from typing import ClassVar

import openai

from providers.openai.client import OpenAIProvider
from streams.provider_config import ProviderSettings

__all__ = ["AzureProvider"]


class AzureProvider(OpenAIProvider):
    """Azure OpenAI: the same Batch API under a resource endpoint, an API version and deployment names.

    A successful job may still name an (empty) error file: that is normal and reads as no errors.
    """

    kind: ClassVar[str] = "azure"

    def _make_client(self, settings: ProviderSettings) -> openai.AsyncOpenAI:
        return openai.AsyncAzureOpenAI(
            azure_endpoint=settings.base_url or "", api_version=settings.api_version,
            api_key=settings.api_key.get_secret_value(), timeout=settings.timeout, max_retries=settings.max_retries,
            http_client=openai.DefaultAioHttpClient(),
        )  # fmt: skip

    def line_url(self, endpoint: str) -> str:
        # Azure's batch lines and batches name the endpoint without the version prefix.
        return endpoint.removeprefix("/v1")
