"""Result downloads: capped as they stream, parsed line by line (``providers/downloads.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from providers.base import ResultsTooLarge
from providers.downloads import download_checked, keyed
from providers.openai import classify
from streams.errors import ProviderUnavailable


def _lines(n: int) -> list[bytes]:
    return [orjson.dumps({"custom_id": f"c{i}", "response": {"status_code": 200, "body": {"i": i}}}) + b"\n"
            for i in range(n)]  # fmt: skip


def _server(body: bytes, headers: dict[str, str], chunk: int = 100) -> Any:
    sent: list[int] = []

    @asynccontextmanager
    async def stream() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), chunk):
                sent.append(start)
                yield body[start : start + chunk]

        yield headers, chunks()

    return stream, sent


async def _fetch(tmp_path: Path, body: bytes, headers: dict[str, str], cap: int, **kw: Any) -> Any:
    stream, sent = _server(body, headers)

    def parse(lines: Any) -> Any:
        return keyed(lines, "custom_id", classify)

    parsed = await download_checked("download of f", stream, tmp_path / "f.jsonl", parse, attempts=2, cap=cap, **kw)
    return parsed, sent


async def test_a_file_within_the_cap_is_parsed_into_outcomes_by_custom_id(tmp_path: Path) -> None:
    body = b"".join(_lines(20))
    admitted: list[int] = []

    async def admit(size: int) -> None:
        admitted.append(size)

    outcomes, _ = await _fetch(tmp_path, body, {"content-length": str(len(body))}, cap=len(body), admit=admit)
    assert sorted(outcomes) == sorted(f"c{i}" for i in range(20)) and outcomes["c3"].body == {"i": 3}
    assert admitted == [len(body)], "the file is admitted by its size before it is parsed"


async def test_a_declared_length_over_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    body = b"".join(_lines(50))
    stream, sent = _server(body, {"content-length": str(len(body))})
    with pytest.raises(ResultsTooLarge, match=r"over the provider's max_result_bytes \(1024\)"):
        await download_checked("download of f", stream, tmp_path / "f.jsonl", list, attempts=3, cap=1024)
    assert sent == [] and not (tmp_path / "f.jsonl").exists()


@pytest.mark.parametrize("headers", [{}, {"content-encoding": "gzip", "content-length": "10"}])
async def test_an_undeclared_or_encoded_body_is_cut_at_the_cap_as_it_streams(tmp_path: Path, headers) -> None:
    body = b"".join(_lines(200))
    stream, sent = _server(body, headers)
    with pytest.raises(ResultsTooLarge):
        await download_checked("download of f", stream, tmp_path / "f.jsonl", list, attempts=3, cap=2048)
    assert len(sent) <= 2048 // 100 + 1, "reading stops at the cap, not at the end of the body"
    assert (tmp_path / "f.jsonl").stat().st_size <= 2048


async def test_a_cut_off_file_is_retried_and_then_reported(tmp_path: Path) -> None:
    body = b"".join(_lines(5))[:-20]  # the last line cut
    with pytest.raises(ProviderUnavailable, match="truncated"):
        await _fetch(tmp_path, body, {}, cap=10**6)
