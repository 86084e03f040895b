"""Providers: one interface for batch jobs and one-off calls (``providers/base.py``), one
implementation per kind, each through the provider's official SDK."""

from providers.anthropic import AnthropicProvider
from providers.base import Job, LineOutcome, Provider, Reply
from providers.openai import AzureProvider, OpenAIProvider
from streams.provider_config import ProviderSettings

__all__ = ["Job", "LineOutcome", "Provider", "Reply", "make_provider"]

_KINDS: dict[str, type[Provider]] = {"openai": OpenAIProvider, "azure": AzureProvider, "anthropic": AnthropicProvider}


def make_provider(name: str, settings: ProviderSettings) -> Provider:
    """The provider a configuration entry describes."""
    return _KINDS[settings.kind](name, settings)
