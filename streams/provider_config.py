"""Provider settings: which API a provider speaks, where, with which key, and its limits.

Part of the configuration (``streams/config.py``); kept apart because each kind of provider
brings its own limits, endpoints and offers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from streams.units import ByteSize, Duration

ProviderKind = Literal["openai", "azure", "anthropic", "gemini"]

#: Batch limits of each kind of provider (requests, bytes per batch); windows are capped by them.
KIND_LIMITS: dict[str, tuple[int, int]] = {
    "openai": (50_000, 200 * 1000 * 1000),
    "azure": (100_000, 200 * 1000 * 1000),
    "anthropic": (100_000, 256 * 1000 * 1000),
    # Gemini: inline requests up to 20 MB, a JSONL input file (Files API) up to 2 GB above that.
    "gemini": (100_000, 2 * 1000 * 1000 * 1000),
}
#: The endpoints each kind serves, the first being a pipeline's default.
KIND_ENDPOINTS: dict[str, tuple[str, ...]] = {
    "openai": ("/v1/chat/completions", "/v1/responses", "/v1/embeddings"),
    # The Responses API is not served under an api-version (Azure's "v1 API" is OpenAI-shaped:
    # use kind openai with base_url https://NAME.openai.azure.com/openai/v1/).
    "azure": ("/v1/chat/completions", "/v1/embeddings"),
    "anthropic": ("/v1/messages",),
    "gemini": ("generateContent",),
}
#: Kinds that sell a flex tier (one-off calls at a batch-like price).
FLEX_KINDS = frozenset({"openai", "gemini"})
#: The name of the provider given as ``provider:`` (the default of every pipeline).
DEFAULT_PROVIDER = "default"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProviderLimits(Frozen):
    """Caps on one batch; unset, the kind's own limits (``KIND_LIMITS``); set, they replace them."""

    max_requests_per_batch: int | None = Field(None, ge=1)
    max_bytes_per_batch: ByteSize | None = Field(None, ge=1024)


class ProviderSettings(Frozen):
    #: Which API this provider speaks, through its official SDK.
    kind: ProviderKind = "openai"
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

    @property
    def batch_limits(self) -> tuple[int, int]:
        """(requests, bytes) one batch may hold: the configured caps, else the kind's own (a
        compatible server may allow more, or less, than the provider it imitates)."""
        requests, nbytes = KIND_LIMITS[self.kind]
        return (self.limits.max_requests_per_batch or requests, self.limits.max_bytes_per_batch or nbytes)

    @property
    def offers_flex(self) -> bool:
        return self.kind in FLEX_KINDS

    @model_validator(mode="after")
    def _kind_fields(self) -> ProviderSettings:
        if self.kind == "azure" and not (self.base_url and self.api_version):
            raise ValueError("base_url (the resource endpoint) and api_version are required with kind: azure")
        if "inline_bytes" in self.model_fields_set and self.kind != "gemini":
            raise ValueError(f"inline_bytes is a gemini setting; this provider is kind: {self.kind}")
        if self.organization is not None and self.kind != "openai":
            raise ValueError(f"organization is an openai setting; this provider is kind: {self.kind}")
        return self
