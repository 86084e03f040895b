"""Background tasks of a pipeline, keyed by the input partition they work for.

Modelled on aiojobs' ``Scheduler`` (spawn, shield, close with a timeout), with what a
consumer-group member needs on top: tasks are filed under an input partition, so a
revocation stops exactly the work of the revoked partitions (``revoke``), and a *shielded*
step (one that must not be abandoned half-way: a batch-create call, the emission of a
finished batch with the state write that follows) is waited for instead of cancelled.
aiojobs itself does not fit: its limit queues jobs as pending, while here a full lane must
stop consumption (the lanes await a semaphore before they take an event on), and it has
no notion of a partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a revocation or a stop waits for cancelled tasks and for shielded steps.
STEP_GRACE = 30.0


class PartitionTasks:
    """Tasks and shielded steps filed by input partition."""

    def __init__(self) -> None:
        self._tasks: dict[int, set[asyncio.Task[Any]]] = {}
        self._steps: dict[int, set[asyncio.Future[Any]]] = {}

    def spawn(self, partition: int, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        tasks = self._tasks.setdefault(partition, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    def shield(self, partition: int, step: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``step`` to its end even if the awaiting task is cancelled; revoke and close wait for it."""
        task = asyncio.ensure_future(step)
        steps = self._steps.setdefault(partition, set())
        steps.add(task)
        task.add_done_callback(steps.discard)
        task.add_done_callback(_retrieve)
        return asyncio.shield(task)

    def count(self, partition: int | None = None) -> int:
        """Tasks running (for one partition, or all)."""
        if partition is not None:
            return len(self._tasks.get(partition, ()))
        return sum(len(tasks) for tasks in self._tasks.values())

    async def revoke(self, partitions: Iterable[int], *, timeout: float = STEP_GRACE) -> int:
        """Cancel the partitions' tasks, then wait for their shielded steps; return how many tasks stopped."""
        partitions = set(partitions)
        doomed = [task for p in partitions for task in self._tasks.pop(p, ())]
        for task in doomed:
            task.cancel()
        if doomed:
            await asyncio.wait(doomed, timeout=timeout)
        steps = [step for p in partitions for step in self._steps.get(p, ())]
        if steps:
            # let creations and emissions finish before the partition's next owner looks
            await asyncio.wait(steps, timeout=timeout)
        return len(doomed)

    async def close(self, *, timeout: float = STEP_GRACE) -> int:
        """Stop everything (idempotent)."""
        return await self.revoke(set(self._tasks) | set(self._steps), timeout=timeout)


def _retrieve(task: asyncio.Future[Any]) -> None:
    # The task that awaited the step may be gone: take the exception so it is not reported
    # as never retrieved (the awaiting side, when there is one, sees it through the shield).
    if not task.cancelled():
        exc = task.exception()
        if exc is not None:
            log.debug("a shielded step failed: %r", exc)
