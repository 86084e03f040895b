"""Provider settings: which API a provider speaks, where, with which key, and its limits.

Part of the configuration (``streams/config.py``); kept apart because each kind of provider
brings its own limits, endpoints and offers: its :class:`~streams.kinds.KindFacts`, handed to the
validation as ``context={"kinds": ...}`` and kept on the settings (:attr:`ProviderSettings.facts`).
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from streams.kinds import KindFacts, kinds_in
from streams.units import ByteSize, Duration

#: The name of the provider given as ``provider:`` (the default of every pipeline).
DEFAULT_PROVIDER = "default"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProviderLimits(Frozen):
    """Caps on one batch; unset, the kind's own limits (``KindFacts.limits``); set, they replace them."""

    max_requests_per_batch: int | None = Field(None, ge=1)
    max_bytes_per_batch: ByteSize | None = Field(None, ge=1024)


class ProviderSettings(Frozen):
    #: Which API this provider speaks, through its official SDK: a kind of the registry
    #: (``providers/registry.py``).
    kind: str = Field("openai", validate_default=True)
    #: The API's base URL; unset, the SDK's default (``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL`` /
    #: ``GOOGLE_GEMINI_BASE_URL`` or the provider's public API). For ``azure``: the resource endpoint,
    #: ``https://NAME.openai.azure.com``.
    base_url: str | None = None
    api_key: SecretStr
    #: ``openai`` only: the organization id sent with every call.
    organization: str | None = None
    #: ``azure`` (required there): the API version, e.g. ``2024-10-21``; ``gemini``: the API
    #: version in the path (unset: ``v1beta``, under which Batch Mode is documented).
    api_version: str | None = None
    #: ``gemini`` only: a window round whose requests fit this many bytes travels inline in the
    #: create call; a larger one goes up as a JSONL file through the Files API.
    inline_bytes: ByteSize = Field(20 * 1000 * 1000, ge=0, le=20 * 1000 * 1000)
    #: Client timeout of one HTTP call (uploads and downloads of 200 MB need long ones).
    timeout: Duration = Field(900.0, gt=0)
    #: Retries the openai SDK makes itself on connection errors, 408, 409, 429 and 5xx.
    max_retries: int = Field(2, ge=0)
    #: How often an in-flight batch is polled.
    poll_interval: Duration = Field(10.0, gt=0)
    #: Retries of a cut-off or failed result download before the batch is retried later.
    download_attempts: int = Field(5, ge=1)
    #: The largest result file downloaded (the work folder needs this much free space per
    #: window reading results at once); a batch whose results are larger ends its requests as
    #: ``batch_results_too_large`` dead letters.
    max_result_bytes: ByteSize = Field(2 * 1000**3, ge=1024)
    #: A batch-create call is abandoned after this long (no SDK retries); after a crash, the
    #: window's next owner looks this long for a batch the old owner was creating.
    create_timeout: Duration = Field(60.0, gt=0)
    #: How long a batch cancelled at ``max_batch_latency`` may take to reach ``cancelled``;
    #: after that its unfinished part goes flex without waiting for the finished part.
    cancel_wait: Duration = Field(60.0, gt=0)
    #: Delete a window's files at the provider once they are no longer needed: its input file
    #: once its batch ended, output and error files once their results are written. They hold
    #: user data; ``false`` keeps them (the provider's own retention then applies).
    delete_files: bool = True
    limits: ProviderLimits = ProviderLimits()
    #: The provider's limit of tokens enqueued in running batches, per model (OpenAI's "batch
    #: queue limit"); unset, no gate. A window round waits until its estimated input tokens fit.
    max_enqueued_tokens: int | None = Field(None, ge=1)

    #: The facts of ``kind``, from the kinds the validation was given.
    _facts: KindFacts | None = PrivateAttr(None)

    @property
    def facts(self) -> KindFacts:
        if self._facts is None:
            raise TypeError('provider settings are validated with context={"kinds": ...} (providers.parse_settings)')
        return self._facts

    @property
    def batch_limits(self) -> tuple[int, int]:
        """(requests, bytes) one batch may hold: the configured caps, else the kind's own (a
        compatible server may allow more, or less, than the provider it imitates)."""
        requests, nbytes = self.facts.limits
        return (self.limits.max_requests_per_batch or requests, self.limits.max_bytes_per_batch or nbytes)

    @property
    def offers_flex(self) -> bool:
        return self.facts.flex

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str, info: ValidationInfo) -> str:
        kinds = kinds_in(info.context)
        if kind not in kinds:
            raise ValueError(f"no provider kind {kind!r} (registered: {', '.join(sorted(kinds))})")
        return kind

    @model_validator(mode="after")
    def _kind_fields(self, info: ValidationInfo) -> ProviderSettings:
        kinds = kinds_in(info.context)
        facts = self._facts = kinds[self.kind]
        if not all(getattr(self, name) for name, _ in facts.requires):
            what = " and ".join(shown for _, shown in facts.requires)
            verb = "is" if len(facts.requires) == 1 else "are"
            raise ValueError(f"{what} {verb} required with kind: {self.kind}")
        for name in type(self).model_fields:
            owners = [k for k, f in kinds.items() if name in f.settings]
            given = name in self.model_fields_set and getattr(self, name) is not None
            if owners and given and name not in facts.settings:
                owner = " or ".join(owners)
                raise ValueError(f"{name} is {_article(owner)} {owner} setting; this provider is kind: {self.kind}")
        return self


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
