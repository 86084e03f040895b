"""Settings: frozen pydantic models, validated once at the edge (``streams/loading.py`` reads
them from a YAML file). Keys and passwords are ``SecretStr``: they print as ``**********``.

The provider kinds a configuration may name come in the validation's context
(``context={"kinds": ...}``, ``streams/kinds.py``); the validated settings keep them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator

from streams.kinds import KindFacts, RequestFormat, formats_of, kinds_in
from streams.pricing import ModelPrice
from streams.provider_config import DEFAULT_PROVIDER, Frozen, ProviderSettings
from streams.units import ByteSize, Duration


class KafkaSettings(Frozen):
    bootstrap_servers: str = "127.0.0.1:9092"
    #: Consumer group (and faust app id) shared by every worker of a deployment.
    group_id: str = "batchstream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    #: Replication factor of the topics the worker creates (output, dead-letter, state).
    replication_factor: int = Field(1, ge=1)
    #: A worker that stops heart-beating (crash, SIGKILL) keeps its partitions this long.
    session_timeout: Duration = Field(30.0, ge=6)
    heartbeat_interval: Duration = Field(3.0, gt=0)
    #: How often the worker commits acknowledged offsets.
    commit_interval: Duration = 1.0

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError("sasl_mechanism, sasl_username and sasl_password are required with SASL")
        return self


class WindowSettings(Frozen):
    """When a micro-batch closes: whichever bound is reached first."""

    max_requests: int = Field(500, ge=1)
    max_bytes: ByteSize = Field(10 * 1000 * 1000, ge=1024)
    max_wait: Duration = Field(5.0, gt=0)


class RetrySettings(Frozen):
    """Per-item retries of retriable failures, and backoff of refused submissions."""

    #: Total attempts per event (first submission included).
    attempts: int = Field(3, ge=1)
    backoff_initial: Duration = Field(1.0, gt=0)
    backoff_max: Duration = Field(300.0, gt=0)


class FlexSettings(Frozen):
    """One-off calls with ``service_tier="flex"``: cheap, slower, sometimes refused (429).

    An event's flex attempts stop at ``attempts`` calls or when ``budget`` has passed since
    its flex handling started, whichever comes first; then ``fallback`` decides its fate:
    ``standard`` (the same request without flex, at the standard price), ``batch`` (the
    event joins a batch window) or ``dead_letter`` (reason ``flex_unavailable``).
    """

    #: Flex calls in flight per pipeline; when full, consumption waits (bounded memory).
    concurrency: int = Field(16, ge=1)
    #: Client timeout of one flex call (flex requests can be slow to start).
    timeout: Duration = Field(900.0, gt=0)
    attempts: int = Field(6, ge=1)
    budget: Duration = Field(900.0, gt=0)
    backoff_initial: Duration = Field(1.0, gt=0)
    backoff_max: Duration = Field(60.0, gt=0)
    fallback: Literal["standard", "batch", "dead_letter"] = "batch"


#: The Batch API's completion window: the longest a batch may take before it expires.
COMPLETION_WINDOW = 24 * 3600.0


class TemplateSettings(Frozen):
    """How an event that is not a request event becomes a request body.

    ``system`` and ``user`` are ``str.format`` templates over the event's top-level fields
    (``{subject}``); without ``user`` the whole event is sent as JSON.
    """

    system: str | None = None
    user: str | None = None
    #: OpenAI ``response_format`` (chat) or ``text.format`` (responses), e.g. a json_schema.
    response_format: dict[str, Any] | None = None
    #: Extra body parameters (temperature, max_tokens, ...).
    parameters: dict[str, Any] = Field(default_factory=dict)


class PipelineSettings(Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: The entry of ``providers`` serving this pipeline; unset, the ``provider:`` entry (or the
    #: only entry of ``providers``).
    provider: str | None = None
    input_topic: str
    output_topic: str
    dead_letter_topic: str
    #: Compacted topic holding the state of in-flight windows (default ``<name>.batchstream-state``).
    state_topic: str | None = None
    #: ``batch`` windows every event into Batch API jobs; ``flex`` calls the provider once per
    #: event with ``service_tier="flex"``; ``auto`` routes each event by its deadline.
    mode: Literal["batch", "flex", "auto"] = "batch"
    #: An endpoint of the provider's kind. Unset: the kind's first (``/v1/messages`` on an
    #: Anthropic provider, ``generateContent`` on a Gemini one, ``/v1/chat/completions`` elsewhere).
    endpoint: str = ""
    model: str
    #: The models a request event (one carrying its own ``body``) may name, besides ``model``;
    #: an event naming another is an ``invalid_request`` dead letter. Unset: any model.
    models: list[str] | None = None
    #: The most output tokens a request event may ask for (``max_tokens``,
    #: ``max_completion_tokens``, ``max_output_tokens``, ``generationConfig.maxOutputTokens``);
    #: more is an ``invalid_request`` dead letter. Unset: no limit.
    max_output_tokens: int | None = Field(None, ge=1)
    #: ``/v1/messages``: the ``max_tokens`` of a request that sets none (Anthropic requires it).
    max_tokens: int = Field(1024, ge=1)
    window: WindowSettings = WindowSettings()
    retry: RetrySettings = RetrySettings()
    template: TemplateSettings = TemplateSettings()
    #: The ``task_version`` stamped on results; unset, a hash of endpoint, model, template and
    #: parameters (``batchstream backfill --task-version`` sets it for a backfill).
    task_version: str | None = Field(None, min_length=1, max_length=128)
    #: Events larger than this are dead-lettered as ``oversized``.
    max_event_bytes: ByteSize = Field(1_000_000, ge=1)
    #: Check each request body with the provider SDK's request types before it joins a window
    #: (one invalid line fails a whole batch at the provider); a failure is an ``invalid_request``
    #: dead letter at once. ``false`` leaves every judgement to the provider.
    validate_requests: bool = True
    #: Windows sealed but not finished; when full, consumption pauses. A safety cap: what gates
    #: submissions is the provider's quota (``max_enqueued_tokens``), and a batch may take hours.
    max_open_batches: int = Field(1000, ge=1)
    #: Events of windows waiting on the provider (or the quota, or a backoff) kept in memory; the
    #: rest are read back from the input topic when their batch ends, so memory does not grow
    #: with the events in flight.
    max_held_requests: int = Field(50_000, ge=0)
    #: The same budget in bytes of JSONL lines: large events reach it before the count does.
    max_held_bytes: ByteSize = Field(256 * 1000**2, ge=0)
    #: Metadata added to every batch (at most 14 pairs: two are batchstream's).
    metadata: dict[str, str] = Field(default_factory=dict, max_length=14)
    flex: FlexSettings = FlexSettings()
    #: A batch still unfinished this long after its window was first submitted is cancelled;
    #: its finished part is kept and the rest goes flex (then the fallback).
    max_batch_latency: Duration | None = Field(None, gt=0)
    #: ``auto`` mode: the deadline of an event that carries none, counted from its Kafka
    #: timestamp. Unset: an event without a deadline goes batch.
    latency_objective: Duration | None = Field(None, gt=0)
    #: Whether a body rendered from this pipeline's template passed the checks against the SDK's
    #: request types: the template fixes every type, so later renderings skip those checks.
    _rendered_types_checked: bool = PrivateAttr(False)
    #: The request format of every endpoint the validation's kinds serve, by endpoint.
    _formats: Mapping[str, RequestFormat] = PrivateAttr(default_factory=dict)
    #: The kinds the validation was given, and the facts of the kind serving this pipeline
    #: (set by :class:`Settings` once it knows the pipeline's provider).
    _kinds: Mapping[str, KindFacts] = PrivateAttr(default_factory=dict)
    _facts: KindFacts | None = PrivateAttr(None)

    @property
    def request_format(self) -> RequestFormat:
        """The format of the pipeline's endpoint (its requests' shape)."""
        return self.format_of(self.endpoint)

    def format_of(self, endpoint: str) -> RequestFormat:
        """The format of ``endpoint`` (a request's, which a window sealed earlier may have set)."""
        # Read from pydantic's store of private attributes directly: asked for every event.
        private = self.__pydantic_private__
        fmt: RequestFormat | None = private.get("_formats", {}).get(endpoint) if private else None
        if fmt is None:
            raise TypeError(f"no request format for {endpoint!r}: pipeline settings are validated with "
                            'context={"kinds": ...} (providers.parse_settings)')  # fmt: skip
        return fmt

    @property
    def kinds(self) -> Mapping[str, KindFacts]:
        """Every kind the validation was given (their list prices price results)."""
        return self._kinds

    @property
    def kind_facts(self) -> KindFacts:
        """The facts of the kind of the provider serving this pipeline."""
        private = self.__pydantic_private__  # read directly: asked for every result
        facts: KindFacts | None = private.get("_facts") if private else None
        if facts is None:
            raise TypeError("the pipeline's provider is known once it is validated as part of its Settings")
        return facts

    def served_by(self, facts: KindFacts) -> None:
        self._facts = facts

    @property
    def rendered_types_checked(self) -> bool:
        # Read from pydantic's store of private attributes directly: asked once per event.
        private = self.__pydantic_private__
        return bool(private and private.get("_rendered_types_checked"))

    def rendered_types_passed(self) -> None:
        self._rendered_types_checked = True

    @property
    def batch_latency_bound(self) -> float:
        """How long the batch path may take for an event: one window plus one batch."""
        return self.window.max_wait + (self.max_batch_latency or COMPLETION_WINDOW)

    @property
    def state_topic_name(self) -> str:
        return self.state_topic or f"{self.name}.batchstream-state"

    @field_validator("endpoint")
    @classmethod
    def _served(cls, endpoint: str, info: ValidationInfo) -> str:
        formats = formats_of(kinds_in(info.context))
        if endpoint not in formats:
            raise ValueError(f"no provider kind serves {endpoint!r} (served: {', '.join(formats)})")
        return endpoint

    @model_validator(mode="after")
    def _known_formats(self, info: ValidationInfo) -> PipelineSettings:
        self._kinds = kinds_in(info.context)
        self._formats = formats_of(self._kinds)
        return self

    @model_validator(mode="after")
    def _distinct_topics(self) -> PipelineSettings:
        topics = [self.input_topic, self.output_topic, self.dead_letter_topic, self.state_topic_name]
        if len(set(topics)) != len(topics):
            raise ValueError("input, output, dead-letter and state topics must all differ")
        return self

    @model_validator(mode="after")
    def _flex_consistent(self) -> PipelineSettings:
        flex_used = self.mode != "batch" or self.max_batch_latency is not None
        fmt = self._formats.get(self.endpoint)
        if flex_used and fmt is not None and not fmt.flex:
            raise ValueError(f"flex processing (mode flex/auto, max_batch_latency) is not offered for {self.endpoint}")
        if self.max_batch_latency is not None and self.flex.fallback == "batch":
            raise ValueError(
                "flex.fallback: 'batch' cannot be combined with max_batch_latency "
                "(a hedged event would go back to a batch); use 'standard' or 'dead_letter'"
            )
        objective = self.latency_objective
        if self.mode == "auto" and objective is not None and objective < self.batch_latency_bound:
            raise ValueError(
                f"latency_objective: {objective:g}s is shorter than the batch path's bound "
                f"(window.max_wait + max_batch_latency = {self.batch_latency_bound:g}s), so no event "
                "would go batch; use mode: flex, or set max_batch_latency below the objective"
            )
        return self


class WebhookSettings(Frozen):
    """Completion webhooks (OpenAI's ``batch.completed`` and others, signed per Standard Webhooks)."""

    #: The endpoint's signing secret (``whsec_...``), from the provider's dashboard.
    secret: SecretStr
    #: The topic ``batchstream webhooks`` publishes verified batch ids to, and workers read.
    topic: str = "batchstream.webhooks"


class Settings(Frozen):
    kafka: KafkaSettings = KafkaSettings()
    #: ``exactly_once``: every result, dead letter and the state that says an event is served are
    #: written in one Kafka transaction per input partition, so a crash never repeats a record (read
    #: them with ``isolation.level=read_committed``); ``at_least_once``: a crash may repeat some.
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "at_least_once"
    #: The default provider (named ``default``): serves every pipeline that names none.
    provider: ProviderSettings | None = None
    #: Providers by name, for pipelines that name one (``provider: claude``).
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    pipelines: list[PipelineSettings] = Field(min_length=1)
    #: How long a starting worker tries to reach Kafka (with backoff) before it exits with code 1.
    startup_timeout: Duration = Field(300.0, ge=0)
    #: Port of the Prometheus metrics endpoint; 0 disables it.
    metrics_port: int = Field(0, ge=0, le=65535)
    #: Address the metrics endpoint binds to (``0.0.0.0`` to be scraped from outside a container).
    metrics_host: str = "127.0.0.1"
    #: Prices by model (USD per million tokens, real-time), over the defaults (``streams/pricing.py``).
    pricing: dict[str, ModelPrice] = Field(default_factory=dict)
    #: Completion webhooks: workers read a batch as soon as its webhook arrives (polling stays
    #: as the fallback, so ``poll_interval`` can be long).
    webhooks: WebhookSettings | None = None
    #: The kinds the validation was given.
    _kinds: Mapping[str, KindFacts] = PrivateAttr(default_factory=dict)

    @property
    def kinds(self) -> Mapping[str, KindFacts]:
        """Every registered kind, as the validation was given them (their list prices price results)."""
        return self._kinds

    @model_validator(mode="before")
    @classmethod
    def _endpoint_by_kind(cls, data: Any, info: ValidationInfo) -> Any:
        # A pipeline that names no endpoint gets its provider kind's default (/v1/messages on Anthropic).
        known = kinds_in(info.context)
        if not isinstance(data, dict) or not isinstance(data.get("pipelines"), list):
            return data
        raw = (
            {name: p for name, p in (data.get("providers") or {}).items()}
            if isinstance(data.get("providers"), dict)
            else {}
        )
        if isinstance(data.get("provider"), dict):
            raw[DEFAULT_PROVIDER] = data["provider"]
        default_kind = ProviderSettings.model_fields["kind"].default
        kinds = {name: p.get("kind", default_kind) for name, p in raw.items() if isinstance(p, dict)}
        pipelines = []
        for pipeline in data["pipelines"]:
            if isinstance(pipeline, dict) and "endpoint" not in pipeline:
                name = pipeline.get("provider") or _default_name(kinds)
                facts = known.get(kinds[name]) if isinstance(name, str) and name in kinds else None
                if facts is not None:
                    pipeline = {**pipeline, "endpoint": facts.endpoints[0].endpoint}
            pipelines.append(pipeline)
        return {**data, "pipelines": pipelines}

    @model_validator(mode="after")
    def _unique_names(self, info: ValidationInfo) -> Settings:
        self._kinds = kinds_in(info.context)
        names = [p.name for p in self.pipelines]
        if len(set(names)) != len(names):
            raise ValueError("pipeline names must be unique")
        return self

    @model_validator(mode="after")
    def _providers_fit(self) -> Settings:
        if self.provider is None and not self.providers:
            raise ValueError("provider: required (or a providers: map)")
        if self.provider is not None and DEFAULT_PROVIDER in self.providers:
            raise ValueError(f"providers.{DEFAULT_PROVIDER}: the name is taken by provider:")
        for index, pipeline in enumerate(self.pipelines):
            name, provider = self.provider_of(pipeline, index)
            _fits(f"pipelines.{index}.", pipeline, name, provider)
        for pipeline in self.pipelines:
            pipeline.served_by(self.provider_of(pipeline)[1].facts)
        return self

    def named_providers(self) -> dict[str, ProviderSettings]:
        """Every configured provider by name (``provider:`` as ``default``)."""
        found = dict(self.providers)
        if self.provider is not None:
            found[DEFAULT_PROVIDER] = self.provider
        return found

    def provider_of(self, pipeline: PipelineSettings, index: int | None = None) -> tuple[str, ProviderSettings]:
        """The name and settings of the provider serving ``pipeline``."""
        where = f"pipelines.{self.pipelines.index(pipeline) if index is None else index}.provider"
        named = self.named_providers()
        name = pipeline.provider or _default_name({n: p.kind for n, p in named.items()})
        if name is None:
            raise ValueError(f"{where}: required when several providers are configured ({', '.join(sorted(named))})")
        if name not in named:
            raise ValueError(f"{where}: no provider named {name!r} (configured: {', '.join(sorted(named))})")
        return name, named[name]


def _default_name(kinds: dict[str, Any]) -> str | None:
    if DEFAULT_PROVIDER in kinds:
        return DEFAULT_PROVIDER
    return next(iter(kinds)) if len(kinds) == 1 else None


def _fits(base: str, pipeline: PipelineSettings, name: str, provider: ProviderSettings) -> None:
    """A pipeline asks only what its provider offers; the error names the pipeline's field."""
    kind, facts = provider.kind, provider.facts
    if pipeline.endpoint not in facts.endpoint_names:
        raise ValueError(f"{base}endpoint: provider {name!r} (kind: {kind}) serves "
                         f"{', '.join(facts.endpoint_names)}, not {pipeline.endpoint}")  # fmt: skip
    if not facts.batch_metadata and pipeline.metadata:
        raise ValueError(f"{base}metadata: {facts.batches} carry no metadata")
    if provider.offers_flex or pipeline.flex.fallback == "standard":
        return
    if pipeline.mode != "batch":
        field, what = "mode", f"mode: {pipeline.mode}"
    elif pipeline.max_batch_latency is not None:
        field, what = "max_batch_latency", "max_batch_latency"
    else:
        return
    raise ValueError(
        f"{base}{field}: provider {name!r} (kind: {kind}) has no flex tier, so {what} cannot call it with flex; "
        "set flex.fallback: standard to make those calls at the standard (real-time) price, or use mode: batch"
    )
