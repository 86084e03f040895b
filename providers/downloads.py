"""Result files: streamed to the work folder with a size cap, checked, and parsed line by line.

A provider's result file is never held whole: it is written to disk as it arrives (at most
``max_result_bytes``: :class:`~providers.base.ResultsTooLarge`), admitted by the caller's budget
of result bytes held at once, then read one line at a time into outcomes by custom id.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from providers.base import OPENAI_ERRORS, Admit, LineOutcome, ResultsTooLarge, admit_all, guarded
from streams.errors import ProviderError, ProviderUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


def local_file(workdir: Path, name: str, suffix: str) -> Path:
    """A file in ``workdir`` for something the provider named (a file id, a batch id): by a digest
    of the name, never the name itself, so that no name (``../x``, a URL) reaches outside ``workdir``."""
    return workdir / f"{hashlib.sha256(name.encode()).hexdigest()[:24]}{suffix}"


def iter_jsonl(path: Path) -> Iterator[Any]:
    """Parsed lines of a JSONL file, one at a time, skipping blank lines."""
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                yield orjson.loads(raw)


def keyed(lines: Iterable[Any], key: str, classify: Callable[[Any], LineOutcome]) -> dict[str, LineOutcome]:
    """Outcomes by each line's ``key`` field (lines without one are skipped), built as the lines
    are read: only the outcomes are held, never the file's lines."""
    return {str(line[key]): classify(line) for line in lines if isinstance(line, dict) and key in line}


class CappedFile(io.RawIOBase):
    """A binary file open for writing that refuses to grow past ``cap`` bytes (:class:`ResultsTooLarge`)."""

    def __init__(self, path: Path, cap: int, what: str) -> None:
        super().__init__()
        self._fh = path.open("wb")
        self.cap, self.what, self.size = cap, what, 0

    def write(self, data: Any) -> int:
        self.size += len(data)
        if self.size > self.cap:
            raise too_large(self.what, self.cap, f"more than {self.cap}")
        return self._fh.write(data)

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self._fh.close()
        super().close()


def too_large(what: str, cap: int, size: int | str) -> ResultsTooLarge:
    return ResultsTooLarge(f"{what}: {size} bytes, over the provider's max_result_bytes ({cap})")


async def download_checked(
    what: str, stream: Callable[[], Any], dest: Path, parse: Callable[[Iterator[Any]], T], *, attempts: int,
    cap: int, admit: Admit = admit_all, errors: tuple[type[Exception], ...] = OPENAI_ERRORS,
) -> T:  # fmt: skip
    """Stream a result file to ``dest`` (at most ``cap`` bytes) and parse its lines with ``parse``;
    retried when cut off.

    ``stream()`` opens the SDK's streaming response: an async context manager giving the
    response headers and its body's chunks. A download counts as complete only when every line
    parses as JSON and, for a response sent as is (no Content-Encoding), when the byte count
    matches Content-Length.
    """
    return await fetch_checked(what, lambda: _download_once(what, stream, dest, cap), dest, parse,
                               attempts=attempts, admit=admit, errors=errors)  # fmt: skip


async def fetch_checked(
    what: str, fetch: Callable[[], Awaitable[None]], dest: Path, parse: Callable[[Iterator[Any]], T], *,
    attempts: int, admit: Admit = admit_all, errors: tuple[type[Exception], ...] = OPENAI_ERRORS,
) -> T:  # fmt: skip
    """Fetch a JSONL file to ``dest`` with ``fetch()``, admit it (``admit(size)``), and parse its
    lines one by one with ``parse``; retried while it is cut off (a line that does not parse) or
    fails transiently."""
    last: ProviderError | None = None
    for attempt in range(1, attempts + 1):
        try:
            await guarded(what, fetch, errors)
            await admit(dest.stat().st_size)  # noqa: ASYNC240 (a stat of a local file)
            return parse(iter_jsonl(dest))
        except orjson.JSONDecodeError as exc:
            last = ProviderUnavailable(f"{what} is truncated: {exc}")
        except ProviderError as exc:
            if not exc.retriable:
                raise
            last = exc
        log.warning("%s failed (attempt %d): %s", what, attempt, last)
    assert last is not None
    raise last


async def _download_once(what: str, stream: Callable[[], Any], dest: Path, cap: int) -> None:
    async with stream() as (headers, chunks):
        encoded = headers.get("content-encoding", "identity").lower() != "identity"
        expected = None if encoded else headers.get("content-length")
        if expected is not None and int(expected) > cap:
            raise too_large(what, cap, int(expected))  # refused before a byte is read
        with CappedFile(dest, cap, what) as fh:
            async for chunk in chunks:
                fh.write(chunk)
            size = fh.size
    if expected is not None and int(expected) != size:
        raise ProviderUnavailable(f"{what} cut off at {size} of {expected} bytes")
