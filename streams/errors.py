"""The one exception hierarchy of batchstream.

    BatchstreamError
     +-- UsageError                   bad command-line arguments (exit 2)
     +-- ConfigError                  bad configuration: raised at start-up, names the field (exit 3)
     +-- Unreachable                  Kafka could not be reached (in time) (exit 1)
     +-- InvalidOutputError           a response is not the JSON its request asked for
     +-- DuplicateCustomIdError       two lines of one window would share a custom_id
     +-- ProviderError                a provider call failed (mapped at the SDK boundary)
          +-- ProviderBackpressure    429 / token_limit_exceeded: wait ``retry_after`` and retry
          +-- ProviderUnavailable     5xx, timeouts, connection errors, cut-off downloads: retry
          +-- ProviderRejected        4xx other than 429: retrying cannot help
               +-- ProviderAccountError   401/402/403: the key or the account, not the request: wait, retry

Behaviour lives in class attributes (``retriable``), so callers never match on messages.
Messages never contain secrets: the SDK's errors carry no key, and config errors show the
field, not the value, of a ``SecretStr``.
"""

from __future__ import annotations

import re
from typing import Any


class BatchstreamError(Exception):
    """Root of every error batchstream raises on purpose."""

    retriable: bool = False


class UsageError(BatchstreamError):
    """The command line is wrong: a flag, a combination of flags, a file it names."""


class ConfigError(BatchstreamError):
    """The configuration file or environment is invalid."""


class Unreachable(BatchstreamError):
    """A service the command needs could not be reached (a worker waits ``startup_timeout`` first)."""


class UnsupportedRelease(BatchstreamError):
    """An installed faust-streaming or aiokafka lacks an internal batchstream relies on: the
    worker refuses to start (exit 1) rather than deliver or commit wrongly."""


class InvalidOutputError(BatchstreamError, ValueError):
    """The response's text is not the JSON the request asked for (dead letter ``invalid_output``)."""


class DuplicateCustomIdError(BatchstreamError, ValueError):
    """Two lines of one window would share a custom_id: the provider would reject the whole file."""


class ProviderError(BatchstreamError):
    """A provider call failed."""

    status_code: int | None = None

    def __init__(
        self, message: str, *, status_code: int | None = None, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        #: The provider's error ``code`` and ``param`` when it sent them.
        self.code = code
        self.param = param


class ProviderBackpressure(ProviderError):
    """The provider refuses new work for now (HTTP 429, ``token_limit_exceeded``)."""

    retriable = True

    def __init__(
        self, message: str, *, status_code: int | None = 429, retry_after: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, status_code=status_code, code=code)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """A transient fault: 5xx, timeout, connection reset, truncated download."""

    retriable = True


class ProviderRejected(ProviderError):
    """The provider refused the request itself (4xx other than 429)."""


#: Status codes and error codes that speak of the key or the account, not of the request.
ACCOUNT_STATUSES = frozenset({401, 402, 403})
ACCOUNT_CODES = frozenset({"authentication_error", "permission_error", "billing_error", "invalid_api_key"})


class ProviderAccountError(ProviderRejected):
    """The provider refused the key or the account (401, 402, 403: a revoked or rotated key, a
    spent balance). Retrying the same request cannot help until someone fixes the account, but
    the request itself is fine: no event is ever dead-lettered for it; calls wait and retry."""

    retriable = True


#: What looks like a credential in a provider's text: OpenAI and Anthropic keys (whole or
#: partly masked, ``sk-ab***yz``), Google API keys, bearer tokens, ``key=`` query parameters.
_SECRETS = re.compile(r"(?:sk-[A-Za-z0-9*_\-]{4,}|AIza[0-9A-Za-z_\-]{16,}|(?<=Bearer )\S+|(?<=[?&]key=)[^&\s\"']+)")


def redact(text: str) -> str:
    """``text`` with anything key-shaped replaced by ``[redacted]``: provider messages reach
    logs, dead letters and ``/readyz`` only through this."""
    return _SECRETS.sub("[redacted]", text)


def redact_all(value: Any, depth: int = 32) -> Any:
    """``value`` (a provider's error object: dicts, lists, strings) with every string redacted;
    anything nested deeper than ``depth`` is dropped (an error object is never that deep)."""
    if isinstance(value, str):
        return redact(value)
    if depth <= 0:
        return None
    if isinstance(value, dict):
        return {redact(str(k)): redact_all(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_all(v, depth - 1) for v in value]
    return value
