"""Micro-batch windows: pure bookkeeping, no I/O, no clock of its own.

A window collects requests of one input partition for one (endpoint, model) and closes
("seals") on whichever bound comes first: ``max_requests`` lines, ``max_bytes`` of JSONL
(the next line would not fit), or ``max_wait`` seconds after its first request. Bounds are
capped by the provider's limits, so a window never needs splitting after a rejection.

Windows are per input partition because the partition is the unit of ownership in a
consumer group: a window's events are then one partition's offsets, recorded in that
partition's state, and move together with it on a rebalance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from streams.errors import DuplicateCustomIdError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WindowKey:
    partition: int
    endpoint: str
    model: str


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    max_requests: int
    max_bytes: int
    max_wait: float

    @classmethod
    def capped(
        cls, *, max_requests: int, max_bytes: int, max_wait: float,
        provider_max_requests: int, provider_max_bytes: int,
    ) -> WindowPolicy:  # fmt: skip
        return cls(
            max_requests=min(max_requests, provider_max_requests),
            max_bytes=min(max_bytes, provider_max_bytes),
            max_wait=max_wait,
        )


@dataclass(slots=True)
class Window(Generic[T]):
    key: WindowKey
    opened_at: float
    items: list[T] = field(default_factory=list)
    custom_ids: set[str] = field(default_factory=set)
    nbytes: int = 0

    def __len__(self) -> int:
        return len(self.items)


class Windower(Generic[T]):
    """Assigns requests to open windows and hands out the ones that closed.

    ``add`` and ``due`` return sealed windows in the order they closed; the caller owns
    them from then on.
    """

    def __init__(self, policy: WindowPolicy) -> None:
        self.policy = policy
        self._open: dict[WindowKey, Window[T]] = {}

    def add(self, key: WindowKey, item: T, custom_id: str, nbytes: int, now: float) -> list[Window[T]]:
        if nbytes > self.policy.max_bytes:
            raise ValueError(f"a single line of {nbytes} bytes exceeds max_bytes {self.policy.max_bytes}")
        sealed: list[Window[T]] = []
        window = self._open.get(key)
        if window is not None and window.nbytes + nbytes > self.policy.max_bytes:
            sealed.append(self._open.pop(key))
            window = None
        if window is None:
            window = self._open[key] = Window(key=key, opened_at=now)
        if custom_id in window.custom_ids:
            raise DuplicateCustomIdError(custom_id)
        window.items.append(item)
        window.custom_ids.add(custom_id)
        window.nbytes += nbytes
        if len(window) >= self.policy.max_requests:
            sealed.append(self._open.pop(key))
        return sealed

    def due(self, now: float) -> list[Window[T]]:
        """Seal and return every window open for ``max_wait`` or longer."""
        keys = [k for k, w in self._open.items() if now - w.opened_at >= self.policy.max_wait]
        return [self._open.pop(k) for k in keys]

    def next_deadline(self) -> float | None:
        if not self._open:
            return None
        return min(w.opened_at for w in self._open.values()) + self.policy.max_wait

    def drop_partition(self, partition: int) -> list[Window[T]]:
        """Forget the open windows of a revoked partition (their events were never acked)."""
        keys = [k for k in self._open if k.partition == partition]
        return [self._open.pop(k) for k in keys]

    @property
    def open_requests(self) -> int:
        return sum(len(w) for w in self._open.values())
