"""Providers: one interface for batch jobs and one-off calls (``providers/base.py``), one
implementation per kind, each through the provider's official SDK (imported only when a
provider of its kind is configured: the SDKs take a while to import)."""

from providers.base import Job, LineOutcome, Provider, Reply
from streams.provider_config import ProviderSettings

__all__ = ["Job", "LineOutcome", "Provider", "Reply", "make_provider"]


def make_provider(name: str, settings: ProviderSettings) -> Provider:
    """The provider a configuration entry describes."""
    if settings.kind == "anthropic":
        from providers.anthropic import AnthropicProvider

        return AnthropicProvider(name, settings)
    if settings.kind == "gemini":
        from providers.gemini import GeminiProvider

        return GeminiProvider(name, settings)
    from providers.openai import AzureProvider, OpenAIProvider

    return AzureProvider(name, settings) if settings.kind == "azure" else OpenAIProvider(name, settings)
