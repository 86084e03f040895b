"""The interface of a provider kind: what ``providers/registry.py`` holds for each folder under
``providers/`` (``KIND`` in the folder's ``__init__.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from providers.base import LineOutcome, Provider
from streams.kinds import KindFacts
from streams.provider_config import ProviderSettings

__all__ = ["Kind"]


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of provider, as its folder declares it.

    ``facts`` is what the configuration and the intake (``streams/``) know of it: its name,
    endpoints and their request formats, batch limits, flex, settings, usage keys and list prices
    (:class:`~streams.kinds.KindFacts`); the registry hands them to ``streams/``.

    ``open`` builds the provider for one configuration entry (a name and its settings). It is
    the only part that imports the kind's SDK (slow to import): a kind's ``__init__.py`` and
    ``outcomes.py`` import none of it, so a worker pays only for the SDKs of the kinds it is
    configured with.

    ``classify`` says what one batch result line means for its request (None: the line is
    missing): ``ok``, ``retry`` or ``fail``. Pure.
    """

    facts: KindFacts
    open: Callable[[str, ProviderSettings], Provider]
    classify: Callable[[Any], LineOutcome]

    @property
    def name(self) -> str:
        return self.facts.name
