"""What a provider kind tells the contracts: its static facts (:class:`KindFacts`) and the shape
of the requests of each endpoint it serves (:class:`RequestFormat`). Pure.

``streams/`` never imports ``providers/``: each kind folder (``providers/<kind>/``) implements
this contract without its SDK, and the registry hands the facts over explicitly. Settings are
validated with ``context={"kinds": {name: facts}}`` (:func:`streams.loading.parse_settings`;
``providers.parse_settings`` fills in the registry), and the validated settings carry them on:
``ProviderSettings.facts``, ``PipelineSettings.request_format`` and ``Settings.kinds``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.errors import InvalidOutputError

__all__ = ["KindFacts", "Prompt", "RequestFormat", "UsageKeys", "formats_of", "kinds_in", "text_output"]


@dataclass(slots=True)
class Prompt:
    """A pipeline's template filled for one event, for a :class:`RequestFormat` to shape (one per
    event: not frozen, whose checked assignments cost more than the rendering around them)."""

    model: str
    #: The user message: the template's ``user`` filled, or the whole event as JSON.
    user: str
    #: The template's ``system``, not yet filled (:meth:`system` fills it, when a shape uses it).
    system_template: str | None
    fields: Mapping[str, Any]
    response_format: dict[str, Any] | None
    parameters: dict[str, Any]
    #: The pipeline's ``max_tokens`` (for a format that requires it).
    max_tokens: int

    def system(self) -> str | None:
        return self.system_template.format_map(self.fields) if self.system_template else None


class RequestFormat(ABC):
    """The requests of one endpoint: how a template renders into a body, whether a body is
    valid, whether it asks for JSON, and what the useful output of its response is.

    Kinds that serve the same endpoint share its format (``azure`` uses ``openai``'s).
    """

    #: The endpoint, as a pipeline names it (``endpoint:``) and a request records it.
    endpoint: str
    #: The body field the endpoint requires for the output tokens (Anthropic's ``max_tokens``): a
    #: request event's body that sets none gets the pipeline's ``max_tokens`` there, and that
    #: setting is part of the pipeline's ``task_version``. None: not required.
    max_tokens_field: str | None = None
    #: Flex processing is offered for this endpoint.
    flex: bool = True

    @abstractmethod
    def render(self, prompt: Prompt) -> dict[str, Any]:
        """The request body of a templated event (KeyError: a field the event lacks)."""

    @abstractmethod
    def check(self, body: dict[str, Any], *, types: bool) -> str | None:
        """Why the provider would refuse ``body`` (its ``model`` already checked), or None.
        ``types=False`` skips the checks against the SDK's request types (the costly part)."""

    @abstractmethod
    def wants_json(self, body: dict[str, Any]) -> bool:
        """Whether ``body`` asks for JSON output (then the output is parsed)."""

    @abstractmethod
    def output(self, body: dict[str, Any], wants_json: bool) -> Any:
        """The useful part of a response body: text, parsed JSON, or embeddings
        (InvalidOutputError: JSON was asked for and the response holds none)."""


def text_output(text: str | None, wants_json: bool) -> Any:
    """A response's text as the output: as is, or parsed when JSON was asked for."""
    if not wants_json:
        return text
    if text is None:
        raise InvalidOutputError("the response has no text to parse as JSON")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidOutputError(f"the response is not valid JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class UsageKeys:
    """Where a kind's response body keeps its usage (``at``), and where that counts its tokens:
    integer fields summed as input or as output."""

    input: tuple[str, ...]
    output: tuple[str, ...]
    at: str = "usage"

    def of(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The usage of a response body, as the provider gave it; None when it has none."""
        usage = body.get(self.at)
        return usage if isinstance(usage, dict) else None

    def counts(self, usage: Any) -> tuple[int, int] | None:
        """(input, output) tokens of ``usage``; None when it is not a mapping."""
        if not isinstance(usage, dict):
            return None

        def count(names: tuple[str, ...]) -> int:
            return sum(v for n in names if type(v := usage.get(n)) is int)

        return count(self.input), count(self.output)


@dataclass(frozen=True, slots=True)
class KindFacts:
    """What the configuration and the intake know of one kind of provider (``providers/<kind>/``)."""

    name: str
    #: The endpoints it serves, the first being a pipeline's default.
    endpoints: tuple[RequestFormat, ...]
    #: Batch limits (requests, bytes per batch); windows are capped by them.
    limits: tuple[int, int]
    usage: UsageKeys
    #: It sells a flex tier (one-off calls at a batch-like price).
    flex: bool = False
    #: Its batches carry metadata; when not, ``batches`` names them in the refusal.
    batch_metadata: bool = True
    batches: str = ""
    #: Provider settings only this kind (and others listing them) accepts, e.g. ``organization``.
    settings: frozenset[str] = frozenset()
    #: Provider settings it requires: (field, how the error names it).
    requires: tuple[tuple[str, str], ...] = ()
    #: List prices (USD per million input / output tokens, real-time) of its models.
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def endpoint_names(self) -> tuple[str, ...]:
        return tuple(f.endpoint for f in self.endpoints)


def formats_of(kinds: Mapping[str, KindFacts]) -> dict[str, RequestFormat]:
    """Every endpoint the kinds serve, with its format; two formats for one endpoint are an error."""
    found: dict[str, RequestFormat] = {}
    for facts in kinds.values():
        for fmt in facts.endpoints:
            if found.setdefault(fmt.endpoint, fmt) is not fmt:
                raise ValueError(f"endpoint {fmt.endpoint}: two request formats ({facts.name} has its own)")
    return found


def kinds_in(context: Any) -> Mapping[str, KindFacts]:
    """The kinds handed to a validation (``context={"kinds": ...}``); TypeError when none were:
    settings are read through ``providers.load_settings`` / ``providers.parse_settings``."""
    kinds = context.get("kinds") if isinstance(context, dict) else None
    if not isinstance(kinds, Mapping):
        raise TypeError('settings are validated with context={"kinds": ...} (providers.parse_settings)')
    return kinds
