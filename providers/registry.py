"""The registry of provider kinds: one line per folder under ``providers/``.

A configuration entry's ``kind`` names one of these; :func:`kind_of` gives its :class:`Kind`
(building the provider, reading its batch results). Their facts reach ``streams/`` through
:func:`load_settings` and :func:`parse_settings`, which validate settings against them. A new
kind is a folder declaring ``KIND`` and its line here (``docs/adding-a-provider.md``).

Only each folder's ``__init__.py`` is imported here: it imports no SDK, so importing the registry
stays cheap; the SDK of a kind is imported when a provider of that kind is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from providers import anthropic, azure, gemini, openai
from providers.kind import Kind
from streams import loading
from streams.config import Settings
from streams.errors import ConfigError
from streams.kinds import KindFacts, RequestFormat, formats_of

__all__ = ["FACTS", "FORMATS", "KINDS", "kind_of", "load_settings", "parse_settings"]

#: Every kind a configuration may name, by name.
KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    openai.KIND,
    azure.KIND,
    anthropic.KIND,
    gemini.KIND,
)}  # fmt: skip
#: What ``streams/`` is told of each kind: settings are validated against these.
FACTS: dict[str, KindFacts] = {name: kind.facts for name, kind in KINDS.items()}
#: The request format of every endpoint a kind serves.
FORMATS: dict[str, RequestFormat] = formats_of(FACTS)


def load_settings(path: str | Path, env: dict[str, str] | None = None) -> Settings:
    """Read, interpolate and validate a configuration file naming the registered kinds
    (:func:`streams.loading.load_settings`); ConfigError naming the field."""
    return loading.load_settings(path, env, kinds=FACTS)


def parse_settings(
    document: dict[str, Any], *, source: str = "<config>", env: dict[str, str] | None = None
) -> Settings:
    """Validate a parsed configuration naming the registered kinds (:func:`streams.loading.parse_settings`)."""
    return loading.parse_settings(document, source=source, env=env, kinds=FACTS)


def kind_of(name: str) -> Kind:
    """The kind called ``name``; ConfigError naming the ``kind`` field when none is registered."""
    kind = KINDS.get(name)
    if kind is None:
        raise ConfigError(f"kind: no provider kind {name!r} (registered: {', '.join(sorted(KINDS))})")
    return kind
