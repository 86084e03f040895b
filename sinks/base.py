"""The sink contract: cheap ``add``, awaited ``flush`` as the commit gate.

``add`` only buffers. ``flush`` does the I/O and returns once the broker confirmed every
record added since the last flush; if it raises, the caller must not advance any offset or
state past those records. Results and dead letters are both sinks.

Flushes are serialised: a caller whose records were taken by a flush already under way
waits for that flush to finish, so "my flush returned" always means "my records are
written", even with many concurrent writers (flex events).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import faust
from pydantic import BaseModel


class Sink(Protocol):
    """Cheap ``add``; ``flush`` writes everything added so far, or raises."""

    def add(self, value: BaseModel, *, key: bytes | None) -> None: ...

    async def flush(self, timeout: float = ...) -> int: ...


class TopicSink:
    """Records to one Kafka topic through the app's producer (acks=all)."""

    def __init__(self, topic: faust.TopicT) -> None:
        self.topic = topic
        self._pending: list[tuple[bytes | None, BaseModel]] = []
        self._flushing = asyncio.Lock()

    def add(self, value: BaseModel, *, key: bytes | None) -> None:
        self._pending.append((key, value))

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self, timeout: float = 60.0) -> int:
        """Send what was added and wait for the broker's acks; return how many."""
        async with self._flushing:
            return await self._flush(timeout)

    async def _flush(self, timeout: float) -> int:
        pending, self._pending = self._pending, []
        if not pending:
            return 0

        async def send_all() -> None:
            futures = [await self.topic.send(key=key, value=value) for key, value in pending]
            await asyncio.gather(*futures)

        try:
            await asyncio.wait_for(send_all(), timeout)
        except BaseException:
            # Nothing of this flush may be assumed written: keep it for the next flush.
            self._pending = pending + self._pending
            raise
        return len(pending)


class MemorySink:
    """A sink that keeps records in memory: the test double for :class:`TopicSink`.

    ``records`` holds what a flush has written; ``fail_next`` makes the next flushes raise
    (nothing of theirs is written) to exercise the commit gate.
    """

    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, BaseModel]] = []
        self.fail_next = 0
        self._pending: list[tuple[bytes | None, BaseModel]] = []

    def add(self, value: BaseModel, *, key: bytes | None) -> None:
        self._pending.append((key, value))

    async def flush(self, timeout: float = 60.0) -> int:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("memory sink: injected flush failure")
        pending, self._pending = self._pending, []
        self.records.extend(pending)
        return len(pending)

    @property
    def values(self) -> list[BaseModel]:
        return [value for _, value in self.records]
