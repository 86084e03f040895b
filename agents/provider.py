"""The provider boundary: Batch API calls through the official openai SDK.

Every SDK exception is mapped here, once, to the project's hierarchy (``raise ... from``):
429 -> ProviderBackpressure, 5xx / timeouts / connection errors / cut-off downloads ->
ProviderUnavailable, any other 4xx -> ProviderRejected. Callers decide on ``retriable``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import orjson
from openai.types import Batch

from streams.config import ProviderSettings
from streams.errors import ProviderBackpressure, ProviderError, ProviderRejected, ProviderUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})

#: Metadata keys batchstream puts on every batch it creates.
META_PIPELINE = "batchstream_pipeline"
META_WINDOW = "batchstream_window"


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def map_error(exc: Exception, what: str) -> ProviderError:
    """Translate an SDK or transport exception into a ProviderError (no secrets in messages)."""
    if isinstance(exc, openai.RateLimitError):
        return ProviderBackpressure(f"{what}: {exc.message}", retry_after=_retry_after(exc), code=exc.code)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"{what}: HTTP {status}: {exc.message}"
        kind = ProviderUnavailable if status >= 500 or status in (408, 409) else ProviderRejected
        return kind(message, status_code=status, code=exc.code, param=exc.param)
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError | httpx.TransportError):
        return ProviderUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    return ProviderUnavailable(f"{what}: {type(exc).__name__}: {exc}")


class BatchClient:
    """Files and Batches calls for one provider. ``close()`` is idempotent."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        #: False once the server refused to list batches (adoption is then impossible).
        self.can_list = True
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key.get_secret_value(),
            organization=settings.organization,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
        )

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise map_error(exc, what) from exc

    async def upload(self, path: Path) -> str:
        """Upload a JSONL file with ``purpose="batch"``; return its file id."""

        async def call() -> str:
            with path.open("rb") as fh:
                created = await self._client.files.create(file=(path.name, fh), purpose="batch")
            return created.id

        return await self._call("upload", call)

    async def create(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> Batch:
        return await self._call(
            "create batch",
            lambda: self._client.with_options(timeout=self.settings.create_timeout, max_retries=0).batches.create(
                input_file_id=file_id,
                endpoint=endpoint,  # type: ignore[arg-type]
                completion_window="24h",
                metadata=metadata,
            ),
        )

    async def delete_file(self, file_id: str) -> None:
        """Delete a file; one already gone (404) counts as deleted."""
        try:
            await self._call("delete file", lambda: self._client.files.delete(file_id))
        except ProviderRejected as exc:
            if exc.status_code != 404:
                raise

    async def discard(self, *file_ids: str | None) -> None:
        """Delete files no longer needed, when ``delete_files`` is set; a failure is only logged."""
        if not self.settings.delete_files:
            return
        for file_id in file_ids:
            if file_id:
                try:
                    await self.delete_file(file_id)
                except ProviderError as exc:
                    log.warning("could not delete file %s: %s", file_id, exc)

    async def retrieve(self, batch_id: str) -> Batch:
        return await self._call("retrieve batch", lambda: self._client.batches.retrieve(batch_id))

    async def cancel(self, batch_id: str) -> Batch:
        return await self._call("cancel batch", lambda: self._client.batches.cancel(batch_id))

    async def respond(
        self, endpoint: str, body: dict[str, Any], *, timeout: float, max_retries: int = 0
    ) -> dict[str, Any]:
        """One synchronous call (a flex or standard request); return the response body as JSON.

        The body is an arbitrary request body from an event, so it goes through the SDK's
        generic ``post`` rather than a typed method that would reject unknown parameters;
        ``cast_to=object`` keeps the JSON as the provider sent it (extra fields included).
        Retries are the caller's: flex needs them inside its own budget.
        """
        path = endpoint.removeprefix("/v1")
        response = await self._call(
            endpoint,
            lambda: self._client.post(
                path, body=body, cast_to=object, options={"timeout": timeout, "max_retries": max_retries}
            ),
        )
        if not isinstance(response, dict):
            raise ProviderUnavailable(f"{endpoint}: the response is not a JSON object")
        return response

    async def find(self, window_tag: str, *, created_after: float) -> Batch | None:
        """The newest batch whose metadata names ``window_tag``, looking back to ``created_after``.

        Used after a restart to adopt a batch created just before a crash instead of
        submitting the same window twice.
        """

        async def call() -> Batch | None:
            async for batch in self._client.batches.list(limit=100):
                if (batch.metadata or {}).get(META_WINDOW) == window_tag:
                    return batch
                if batch.created_at < created_after:
                    return None
            return None

        if not self.can_list:
            return None
        try:
            return await self._call("list batches", call)
        except ProviderRejected as exc:
            # A server that cannot list batches (404/405): nothing can be adopted, so windows
            # are submitted again after a crash; the rare duplicate beats a window stuck forever.
            log.warning("cannot list batches (%s): batches created before a crash cannot be adopted", exc)
            self.can_list = False
            return None

    async def download(self, file_id: str, dest: Path) -> Path:
        """Stream a result file to ``dest``; retry when the transfer is cut off.

        A download counts as complete only when the byte count matches Content-Length (when
        sent) and every line parses as JSON.
        """
        last: ProviderError | None = None
        for attempt in range(1, self.settings.download_attempts + 1):
            try:
                await self._download_once(file_id, dest)
                return dest
            except ProviderError as exc:
                if not exc.retriable:
                    raise
                last = exc
                log.warning("download of %s failed (attempt %d): %s", file_id, attempt, exc)
        assert last is not None
        raise last

    async def _download_once(self, file_id: str, dest: Path) -> None:
        async def call() -> None:
            async with self._client.files.with_streaming_response.content(file_id) as response:
                expected = response.headers.get("content-length")
                size = 0
                with dest.open("wb") as fh:
                    async for chunk in response.iter_bytes():
                        fh.write(chunk)
                        size += len(chunk)
            if expected is not None and int(expected) != size:
                raise ProviderUnavailable(f"download of {file_id} cut off at {size} of {expected} bytes")

        await self._call("download", call)
        try:
            for _ in iter_jsonl(dest):
                pass
        except orjson.JSONDecodeError as exc:
            raise ProviderUnavailable(f"download of {file_id} is truncated: {exc}") from exc


def iter_jsonl(path: Path) -> Iterator[Any]:
    """Parsed lines of a JSONL file, skipping blank lines."""
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                yield orjson.loads(raw)
