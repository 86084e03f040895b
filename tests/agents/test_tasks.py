"""Partition tasks: a revocation stops exactly its partitions' tasks and waits for shielded steps."""

from __future__ import annotations

import asyncio

from agents.tasks import PartitionTasks


async def test_revoke_cancels_only_the_revoked_partitions_tasks():
    tasks = PartitionTasks()
    forever = asyncio.Event()
    a = tasks.spawn(0, forever.wait(), name="p0")  # type: ignore[arg-type]
    b = tasks.spawn(1, forever.wait(), name="p1")  # type: ignore[arg-type]
    assert await tasks.revoke([0], timeout=5) == 1
    assert a.cancelled()
    assert not b.done()
    assert tasks.count(0) == 0 and tasks.count(1) == 1
    await tasks.close(timeout=5)
    assert b.cancelled() and tasks.count() == 0


async def test_a_shielded_step_outlives_the_cancelled_task_and_revoke_waits_for_it():
    tasks = PartitionTasks()
    release, started = asyncio.Event(), asyncio.Event()
    written: list[str] = []

    async def emit() -> str:
        started.set()
        await release.wait()
        written.append("records")
        return "done"

    async def tracker() -> None:
        await tasks.shield(3, emit())

    async def plain() -> None:
        running.set()
        await asyncio.Event().wait()

    running = asyncio.Event()
    task = tasks.spawn(3, tracker(), name="window")
    other = tasks.spawn(4, plain(), name="no step")
    await started.wait()
    await running.wait()
    revoking = asyncio.create_task(tasks.revoke([3], timeout=5))
    # The control: a revocation started just after, of a partition whose running task has no
    # step, goes through the same cancel-and-wait; once it has returned, the first would have
    # too, had it not waited for the step.
    assert await asyncio.create_task(tasks.revoke([4], timeout=5)) == 1 and other.cancelled()
    assert not revoking.done(), "revoke waits for the shielded step"
    release.set()
    await revoking
    assert task.cancelled()
    assert written == ["records"], "the step ran to its end although its task was cancelled"
