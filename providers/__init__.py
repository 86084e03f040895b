"""Providers: one interface for batch jobs and one-off calls (``providers/base.py``), one folder
per kind (``providers/<kind>/``) declaring a :class:`~providers.kind.Kind`, and the registry of
kinds (``providers/registry.py``), which also reads settings against the registered kinds
(:func:`load_settings`, :func:`parse_settings`). Each kind speaks through the provider's official SDK,
imported only when a provider of its kind is opened (the SDKs take a while to import)."""

from providers.base import Job, LineOutcome, Provider, Reply
from providers.kind import Kind
from providers.registry import FACTS, FORMATS, KINDS, kind_of, load_settings, parse_settings
from streams.provider_config import ProviderSettings

__all__ = [
    "FACTS", "FORMATS", "KINDS", "Job", "Kind", "LineOutcome", "Provider", "Reply", "kind_of", "load_settings",
    "make_provider", "parse_settings",
]  # fmt: skip


def make_provider(name: str, settings: ProviderSettings) -> Provider:
    """The provider a configuration entry describes, opened by its kind."""
    return kind_of(settings.kind).open(name, settings)
