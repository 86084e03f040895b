"""A window's record in the state topic: what the window is, where it stands, and each
transition to its next record. Pure: the state topic's schema, written by the ledger
(``agents/state.py``) and read by ``batchstream status``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, model_validator


class Status(StrEnum):
    """Where a window stands. A ``StrEnum``: the state topic holds the bare value (``"sealed"``),
    as it did when this was a ``Literal``, so records written before and after read alike."""

    #: Its current round is to be submitted (or its batch, if a create call made one, adopted).
    SEALED = "sealed"
    #: Its current round's batch runs at the provider.
    SUBMITTED = "submitted"
    #: Late (``max_batch_latency``): what it still owes goes flex.
    HEDGED = "hedged"
    #: Every event has its result or dead letter written.
    DONE = "done"


def runs(offsets: list[int]) -> list[tuple[int, int]]:
    """Sorted offsets as inclusive (first, last) runs: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for offset in sorted(offsets):
        if out and offset == out[-1][1] + 1:
            out[-1] = (out[-1][0], offset)
        else:
            out.append((offset, offset))
    return out


class WindowRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    window_id: str
    pipeline: str
    #: Whose window this is: a state topic may be shared (a pipeline re-pointed to another
    #: input topic, two consumer groups running the same pipeline name); others' records are ignored.
    input_topic: str | None = None
    group_id: str | None = None
    partition: int
    endpoint: str
    model: str
    first_offset: int
    last_offset: int
    count: int
    status: Status
    #: Attempt number of the current submission (1 = first).
    round: int = 1
    #: Offsets still pending in a retry round; None means every event of the window.
    offsets: list[int] | None = None
    #: The window's offsets as runs, when they are not the whole range (events of the same
    #: partition that went flex sit between them).
    members: list[tuple[int, int]] | None = None
    batch_id: str | None = None
    sealed_at: float
    submitted_at: float | None = None
    #: When the window was first submitted: ``max_batch_latency`` counts from here.
    first_submitted_at: float | None = None
    #: When the current round's create call started (None: no batch can exist for it).
    create_started_at: float | None = None
    #: The current round's uploaded input file (reused by a retried create, deleted at the end).
    input_file_id: str | None = None
    #: How many times the current round's requests have been tried, this round included. A
    #: resubmission of requests that never ran (their batch failed validation) is not a try.
    attempts: int = 1
    #: Batches of this window that failed as a whole (bounds bisection).
    failed_batches: int = 0
    #: Groups of offsets waiting for a round of their own, in order, each with the attempt
    #: number it will run as: halves of a bisected batch, and retries of failed requests.
    deferred: list[tuple[list[int], int]] = []
    #: Bytes of the window's request lines when it was sealed (sizes a round for the token quota
    #: without its requests in memory); None in records written before it was kept.
    nbytes: int | None = None
    #: What the window's requests were made with (``streams.models.task_of``): a read-back
    #: renders its events with it and its results carry its ``task_version``, whatever the
    #: pipeline's configuration says by then. None in records written before it was kept.
    task: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _attempts_of_older_records(cls, data: Any) -> Any:
        # Records written before ``attempts`` existed counted attempts in ``round``.
        if isinstance(data, dict) and "attempts" not in data and "round" in data:
            return {**data, "attempts": data["round"]}
        return data

    @property
    def owed(self) -> list[int] | None:
        """Every offset the window still owes a fate: the current round's and the deferred ones."""
        if not self.deferred:
            return self.offsets
        current = self.offsets or []
        return sorted([*current, *(o for group, _ in self.deferred for o in group)])

    @property
    def owed_now(self) -> list[int]:
        """The current round's offsets: ``offsets``, or every offset of the window."""
        if self.offsets is not None:
            return self.offsets
        spans = self.members or [(self.first_offset, self.last_offset)]
        return [offset for first, last in spans for offset in range(first, last + 1)]

    @property
    def round_bytes(self) -> int | None:
        """The current round's share of the window's request bytes (None when not recorded)."""
        if self.nbytes is None:
            return None
        if self.offsets is None or self.count == 0:
            return self.nbytes
        return self.nbytes * len(self.offsets) // self.count

    @property
    def tag(self) -> str:
        """What the batch's metadata carries to be found again: window and round."""
        return f"{self.window_id}#r{self.round}"

    def holds(self, offset: int) -> bool:
        """Whether the event at ``offset`` of the window's partition is one of its events (any
        round). By offset alone: the window keeps its exact members, whatever its events would
        render to under the pipeline's configuration now."""
        if not self.first_offset <= offset <= self.last_offset:
            return False
        return self.members is None or any(first <= offset <= last for first, last in self.members)

    def round_filter(self) -> Callable[[int], bool]:
        """A predicate: whether an offset belongs to the current round of this window."""
        pending = None if self.offsets is None else frozenset(self.offsets)
        return lambda offset: self.holds(offset) and (pending is None or offset in pending)

    def dumps(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    # -- transitions: each returns the next record; the ledger saves it --------------------
    def create_started(self, now: float, input_file_id: str | None) -> WindowRecord:
        """A create call for the current round is about to start: a batch may exist from here."""
        return self.model_copy(update={"create_started_at": now, "input_file_id": input_file_id})

    def submitted(self, batch_id: str, now: float) -> WindowRecord:
        return self.model_copy(update={
            "status": Status.SUBMITTED, "batch_id": batch_id, "submitted_at": now,
            "first_submitted_at": self.first_submitted_at or now,
        })  # fmt: skip

    def next_round(
        self, offsets: Iterable[int], now: float, *, attempts: int, same_round: bool = False, **update: object
    ) -> WindowRecord:
        """Sealed again for ``offsets``, to be tried as attempt ``attempts`` (``same_round`` when
        the provider refused the batch before it existed: the same batch tag)."""
        return self.model_copy(update={
            "status": Status.SEALED, "batch_id": None, "round": self.round if same_round else self.round + 1,
            "attempts": attempts, "offsets": sorted(offsets), "sealed_at": now, "create_started_at": None,
            "input_file_id": None, **update,
        })  # fmt: skip

    def after_round(self, retry: Iterable[int], now: float) -> WindowRecord:
        """A round ended with its results written: the next deferred group, the retries, or done."""
        retry = sorted(retry)
        queue = list(self.deferred) + ([(retry, self.attempts + 1)] if retry else [])
        if not queue:
            return self.done()
        (offsets, attempts), rest = queue[0], queue[1:]
        return self.next_round(offsets, now, attempts=attempts, deferred=rest)

    def resubmitted(self, rest: Iterable[int], now: float) -> WindowRecord:
        """The batch failed validation naming some lines: ``rest`` (the round without them) again,
        not counted."""
        rest = sorted(rest)
        failed = self.model_copy(update={"failed_batches": self.failed_batches + 1})
        if not rest:
            return failed.after_round((), now)
        return failed.next_round(rest, now, attempts=self.attempts)

    def bisected(self, first: Iterable[int], second: Iterable[int], now: float) -> WindowRecord:
        """The batch failed with no line named: its halves as rounds of their own, not counted."""
        return self.next_round(first, now, attempts=self.attempts, failed_batches=self.failed_batches + 1,
                               deferred=[(sorted(second), self.attempts), *self.deferred])  # fmt: skip

    def hedged(self, offsets: Iterable[int]) -> WindowRecord:
        """Cancelled at ``max_batch_latency`` with its finished part emitted; ``offsets`` (and every
        deferred group) go flex."""
        owed = sorted({*offsets, *(o for group, _ in self.deferred for o in group)})
        return self.model_copy(update={"status": Status.HEDGED, "offsets": owed, "deferred": []})

    def done(self) -> WindowRecord:
        """Every event of the window has its result or dead letter written."""
        return self.model_copy(update={"status": Status.DONE, "offsets": None, "deferred": []})
