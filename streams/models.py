"""The event contract: what flows in, and the records that flow out.

Input values are JSON objects. A *request event* ``{"id": ..., "body": {...}}`` (``body``
an object) carries a request body for the pipeline's endpoint as is (OpenAI's,
Anthropic's or Gemini's); any other object, including one whose ``body`` is a string such as a ticket's
text, is rendered into a body by the pipeline's template. ``id`` is optional: the default
is ``<topic>/<partition>/<offset>``, stable across replays. In ``mode: auto`` an event may
carry a ``deadline`` (field or Kafka header): an ISO 8601 time with a zone, or epoch
seconds. Anything else (undecodable bytes, invalid JSON, a non-object, an oversized value,
a template that does not fit, a bad deadline) becomes a dead letter at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from streams.config import PipelineSettings
from streams.kinds import UsageKeys
from streams.pricing import Cost
from streams.templates import render_body
from streams.validation import check_body

ReasonCode = Literal[
    "undecodable",
    "invalid_json",
    "wrong_shape",
    "oversized",
    "template_error",
    "invalid_request",
    "provider_rejected",
    "retries_exhausted",
    "batch_failed",
    "invalid_output",
    "flex_unavailable",
    "input_gone",
    "result_too_large",
    "batch_results_too_large",
    "unprocessable",
]

#: Raw Kafka headers as faust and aiokafka hand them over.
Headers = Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None


@dataclass(frozen=True, slots=True)
class Source:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None

    @property
    def default_id(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input event cannot become a request."""

    reason: ReasonCode
    message: str


@dataclass(frozen=True, slots=True)
class Request:
    """One event made into one provider request."""

    id: str
    key: bytes | None
    source: Source
    endpoint: str
    model: str
    body: dict[str, Any]
    wants_json: bool
    event: Any
    #: Epoch seconds by which the event wants its result (``mode: auto`` only).
    deadline: float | None = None
    #: The JSONL line for the endpoint as is, once built (it is sized at intake and uploaded later).
    _line: bytes | None = field(default=None, init=False, compare=False, repr=False)

    @property
    def custom_id(self) -> str:
        # Partition and offset make it unique in a window's file and join a result line
        # back to its event even after a restart, when the event is re-read by offset.
        return f"{self.source.partition}-{self.source.offset}"

    def jsonl_line(self, url: str | None = None) -> bytes:
        """The request as a line of an OpenAI-format batch file (``url``: the endpoint as the provider names it)."""
        if url is not None and url != self.endpoint:
            return _line(self.custom_id, url, self.body)
        if self._line is None:
            object.__setattr__(self, "_line", _line(self.custom_id, self.endpoint, self.body))  # a cache, not state
        assert self._line is not None
        return self._line


def _line(custom_id: str, url: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}) + b"\n"


class SourceRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, source: Source) -> SourceRecord:
        return cls(topic=source.topic, partition=source.partition, offset=source.offset)


class Timestamps(BaseModel):
    model_config = ConfigDict(frozen=True)

    received: float | None
    submitted: float | None
    completed: float | None


class Tokens(BaseModel):
    """Token counts of one result, the same for every provider (``usage`` keeps the provider's own)."""

    model_config = ConfigDict(frozen=True)

    input: int
    output: int

    @classmethod
    def of(cls, usage: Any, keys: UsageKeys) -> Tokens | None:
        """From a provider's ``usage``, counted as its kind says (``keys``: ``KindFacts.usage``)."""
        counts = token_counts(usage, keys)
        return None if counts is None else cls(input=counts[0], output=counts[1])


def token_counts(usage: Any, keys: UsageKeys) -> tuple[int, int] | None:
    """(input, output) tokens of a provider's ``usage``, as :meth:`Tokens.of` counts them."""
    return keys.counts(usage)


class Result(BaseModel):
    """One succeeded event, on the output topic."""

    model_config = ConfigDict(frozen=True)

    id: str
    pipeline: str
    task_version: str
    #: The name of the provider that served it (``default`` for the ``provider:`` entry).
    provider: str | None = None
    mode: str
    batch_id: str | None
    service_tier: str | None = None
    output: Any
    response: dict[str, Any]
    usage: dict[str, Any] | None
    tokens: Tokens | None = None
    #: USD: ``paid`` at the path that served it, ``realtime`` at the standard price (None: no price known).
    cost: Cost | None = None
    source: SourceRecord
    timestamps: Timestamps


def task_version(cfg: PipelineSettings) -> str:
    """The pipeline's ``task_version`` when set, else a short hash of what determines an
    output: endpoint, model, template and parameters."""
    if cfg.task_version is not None:
        return cfg.task_version
    what: dict[str, Any] = {
        "endpoint": cfg.endpoint,
        "model": cfg.model,
        "template": cfg.template.model_dump(mode="json"),
    }
    if cfg.request_format.max_tokens_field is not None:
        what["max_tokens"] = cfg.max_tokens
    material = orjson.dumps(what, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(material).hexdigest()[:12]


#: Where a request body asks for its output tokens, by endpoint shape.
_OUTPUT_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def outside_limits(cfg: PipelineSettings, body: dict[str, Any]) -> str | None:
    """Why a request event's own body is outside the pipeline's ``models`` and
    ``max_output_tokens`` (a producer must not pick a dearer model or a longer answer); None
    when it is within them."""
    model = body.get("model")
    if cfg.models is not None and model != cfg.model and model not in cfg.models:
        return f"model {model!r} is not one of the pipeline's models ({', '.join([cfg.model, *cfg.models])})"
    if cfg.max_output_tokens is not None:
        generation = body.get("generationConfig")
        asked = [body.get(name) for name in _OUTPUT_TOKENS_FIELDS]
        asked.append(generation.get("maxOutputTokens") if isinstance(generation, dict) else None)
        for value in asked:
            if isinstance(value, int | float) and not isinstance(value, bool) and value > cfg.max_output_tokens:
                return f"the request asks for {value} output tokens; the pipeline allows {cfg.max_output_tokens}"
    return None


def task_of(cfg: PipelineSettings) -> dict[str, Any]:
    """What a window's requests are made with: kept in its record, so that the window finishes
    as it was sealed (:func:`as_sealed`) when the configuration changes while it is in flight."""
    return {
        "endpoint": cfg.endpoint, "model": cfg.model, "template": cfg.template.model_dump(mode="json"),
        "max_tokens": cfg.max_tokens, "task_version": task_version(cfg),
    }  # fmt: skip


def as_sealed(cfg: PipelineSettings, task: dict[str, Any] | None) -> PipelineSettings:
    """The pipeline's configuration as a window was sealed with it (``task``: :func:`task_of`;
    None: as it is now), for re-rendering events that were already accepted: no local
    validation, no size limit and no model or token limits (a newer version, or a changed limit,
    may judge differently)."""
    update: dict[str, Any] = {"validate_requests": False, "max_event_bytes": 2**62, "models": None,
                              "max_output_tokens": None}  # fmt: skip
    if task:
        update.update({k: task[k] for k in ("endpoint", "model", "max_tokens") if k in task})
        if "template" in task:
            update["template"] = type(cfg.template).model_validate(task["template"])
        update["task_version"] = task.get("task_version")
    return cfg.model_copy(update=update)


def parse_deadline(value: Any) -> float:
    """An absolute time: epoch seconds (or milliseconds), or ISO 8601 with a zone."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                raise ValueError(f"{text!r} has no time zone") from None
            return moment.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a time")  # noqa: TRY004 - callers catch ValueError
    return float(value) / 1000 if value > 1e11 else float(value)


def _header(headers: Headers, name: str) -> bytes | None:
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key.lower() == name:
            return value
    return None


def decode_event(
    cfg: PipelineSettings, source: Source, key: bytes | None, value: bytes | None, headers: Headers = None
) -> Request | Rejection:
    """Turn one Kafka record into a request, or say why it cannot be one. Pure, and total: no
    input makes it raise (what it did not foresee is an ``unprocessable`` rejection)."""
    try:
        decoded = _decode(cfg, source, key, value, headers)
        if isinstance(decoded, Request):
            decoded.jsonl_line()  # built once here (and sized by intake): it must serialise
    except orjson.JSONEncodeError as exc:
        return Rejection("invalid_request", f"the request cannot be written as JSON: {exc}")
    except Exception as exc:  # noqa: BLE001 - one event's problem must never stop the stream
        return Rejection("unprocessable", f"the event could not be made into a request: {type(exc).__name__}: {exc}")
    return decoded


def _decode(
    cfg: PipelineSettings, source: Source, key: bytes | None, value: bytes | None, headers: Headers
) -> Request | Rejection:
    raw = value or b""
    if len(raw) > cfg.max_event_bytes:
        return Rejection("oversized", f"event is {len(raw)} bytes, limit {cfg.max_event_bytes}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("undecodable", f"value is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("invalid_json", f"value is not JSON: {exc}")
    if not isinstance(event, dict):
        return Rejection("wrong_shape", f"expected a JSON object, got {type(event).__name__}")
    event_id = event.get("id", source.default_id)
    if not isinstance(event_id, str | int) or isinstance(event_id, bool) or event_id == "":
        return Rejection("wrong_shape", "'id' must be a non-empty string or an integer")
    fmt = cfg.request_format
    rendered = not isinstance(event.get("body"), dict)
    if not rendered:
        body = dict(event["body"])
        body.setdefault("model", cfg.model)
        if fmt.max_tokens_field is not None:
            body.setdefault(fmt.max_tokens_field, cfg.max_tokens)
        if not isinstance(body["model"], str):
            return Rejection("wrong_shape", "'body.model' must be a string")
        if (refused := outside_limits(cfg, body)) is not None:
            return Rejection("invalid_request", refused)
    else:
        try:
            body = render_body(cfg, event, fmt)
        except KeyError as exc:
            return Rejection("template_error", f"template field {exc.args[0]!r} is missing from the event")
        except (ValueError, IndexError, AttributeError, TypeError) as exc:  # a format spec on null, [0] on a number...
            return Rejection("template_error", f"template cannot render this event: {type(exc).__name__}: {exc}")
    if cfg.validate_requests:
        types_known = rendered and cfg.rendered_types_checked
        if (problem := check_body(fmt, body, types=not types_known)) is not None:
            return Rejection("invalid_request", f"the request would be refused: {problem}")
        if rendered:
            cfg.rendered_types_passed()
    deadline: float | None = None
    if cfg.mode == "auto":
        given = event.get("deadline", _header(headers, "deadline"))
        if given is not None:
            try:
                deadline = parse_deadline(given)
            except ValueError as exc:
                return Rejection("wrong_shape", f"'deadline' must be epoch seconds or ISO 8601 with a zone: {exc}")
    return Request(
        id=str(event_id),
        key=key,
        source=source,
        endpoint=cfg.endpoint,
        model=body["model"],
        body=body,
        wants_json=fmt.wants_json(body),
        event=event,
        deadline=deadline,
    )
