"""The registry of provider kinds: one line per folder under ``providers/``.

A configuration entry's ``kind`` names one of these; :func:`kind_of` gives its :class:`Kind`
(building the provider, reading its batch results). A new kind is a folder declaring ``KIND``
and its line here (``docs/adding-a-provider.md``).

Only each folder's ``__init__.py`` is imported here: it imports no SDK, so importing the registry
stays cheap; the SDK of a kind is imported when a provider of that kind is opened.
"""

from __future__ import annotations

from providers import anthropic, azure, gemini, openai
from providers.kind import Kind
from streams.errors import ConfigError

__all__ = ["KINDS", "kind_of"]

#: Every kind a configuration may name, by name.
KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    openai.KIND,
    azure.KIND,
    anthropic.KIND,
    gemini.KIND,
)}  # fmt: skip


def kind_of(name: str) -> Kind:
    """The kind called ``name``; ConfigError naming the ``kind`` field when none is registered."""
    kind = KINDS.get(name)
    if kind is None:
        raise ConfigError(f"kind: no provider kind {name!r} (registered: {', '.join(sorted(KINDS))})")
    return kind
