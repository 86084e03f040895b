"""Input offsets: one commit frontier per owned partition, committed by batchstream itself.

The rule (``docs/durability.md``): the committed offset of an input partition never passes
an event whose fate is not durable. Every delivered event is entered in its partition's
:class:`~streams.offsets.Frontier`; the lanes mark it finished once its record or its
window's ``sealed`` record is written. :meth:`Commits.commit` commits the frontier
positions through the faust consumer: every ``kafka.commit_interval``, before partitions
are released, and at stop.

No event is ever acked to faust. faust's own arithmetic commits to the end of the first run
of acked offsets and checks the head against the last commit off by one, so out-of-order
acks (the normal case here) would commit past events still waiting; with nothing acked it
never commits anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from agents.retry import describe
from streams.app import TP, App, EventT, commit_offsets, request_rejoin
from streams.offsets import Frontier

log = logging.getLogger(__name__)

#: How often an event delivered before its partition's state is loaded says it is still waiting.
ASSIGNMENT_WAIT = 60.0


class Commits:
    """The frontiers of one input topic's partitions owned by this worker, for one pipeline.

    Pipelines that read the same input topic share its committed offsets (one consumer group):
    they are *peers* (:meth:`join`), and a partition is committed only to the oldest position
    of any of them, and only while each of them has the partition's state loaded. So a fast
    pipeline never commits past an event a slow one still holds.
    """

    def __init__(self, app: App, topic: str) -> None:
        self.app = app
        self.topic = topic
        self.frontiers: dict[int, Frontier] = {}
        self._committed: dict[int, int] = {}
        #: Every pipeline's Commits of this input topic in this worker, this one included.
        self.peers: list[Commits] = [self]
        #: Events delivered before their partition's assignment finished loading wait on these.
        self._waiting: dict[int, asyncio.Future[None]] = {}

    def join(self, other: Commits) -> None:
        """Share the input topic with ``other``'s pipeline (and its peers)."""
        assert other.topic == self.topic, "peers read the same input topic"
        if other.peers is self.peers:
            return
        self.peers.extend(p for p in other.peers if p not in self.peers)
        for peer in self.peers:
            peer.peers = self.peers
            peer._committed = self._committed

    def open(self, partitions: Iterable[int]) -> None:
        """New frontiers for a new assignment; wakes every waiting event.

        Waiters of partitions not in this assignment wake too: they hold events of an earlier
        generation, which they now see as stale.
        """
        for partition in partitions:
            self.frontiers[partition] = Frontier()
            if all(peer is self or partition not in peer.frontiers for peer in self.peers):
                self._committed.pop(partition, None)  # a new assignment: the first peer to load it
        for partition in list(self._waiting):
            self._wake(partition)

    def ready(self, event: EventT[Any]) -> Frontier | None:
        """The event's frontier at once when its partition is loaded and the event current (the
        common case); None otherwise, and then :meth:`frontier_of` says whether to wait or skip."""
        message = event.message
        if self._stale(message):
            return None
        return self.frontiers.get(message.partition)

    async def frontier_of(self, event: EventT[Any]) -> Frontier | None:
        """The frontier of the event's partition, once its assignment is loaded.

        None when the event is stale: delivered in an earlier generation of the group, or its
        partition was revoked while it waited; whoever owns the partition now reads it again
        from the committed offset. There is no time limit: an event skipped here while its
        partition stays owned would let the frontier pass it, so a slow load holds intake.
        """
        message = event.message
        if self._stale(message):
            return None
        frontier = self.frontiers.get(message.partition)
        if frontier is not None:
            return frontier
        waiter = self._waiting.setdefault(message.partition, asyncio.get_running_loop().create_future())
        while not waiter.done():
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout=ASSIGNMENT_WAIT)
            except TimeoutError:
                log.warning("%s[%d]: offset %d still waits for the partition's state to load",
                            self.topic, message.partition, message.offset)  # fmt: skip
        if self._stale(message):
            return None
        return self.frontiers.get(message.partition)

    def _stale(self, message: Any) -> bool:
        generation = getattr(message, "generation_id", None)
        return generation is not None and generation != self.app.consumer_generation_id

    def rejoin(self) -> None:
        """Ask the group consumer to rejoin the group: a rebalance, then a fresh assignment."""
        try:
            request_rejoin(self.app)
        except Exception as exc:  # noqa: BLE001 - the next rebalance does the same, later
            log.warning("%s: could not ask the consumer to rejoin the group: %s", self.topic, describe(exc))

    @property
    def committed(self) -> dict[int, int]:
        """The offsets this worker last committed, by owned partition."""
        return dict(self._committed)

    @property
    def unfinished(self) -> int:
        """Events received whose fate is not durable yet, over every owned partition."""
        return sum(frontier.pending for frontier in self.frontiers.values())

    async def commit(self, partitions: Iterable[int] | None = None) -> None:
        """Commit the frontier positions that moved since the last commit."""
        wanted = None if partitions is None else set(partitions)
        offsets = {
            TP(self.topic, p): position
            for p in self.frontiers
            if (wanted is None or p in wanted)
            and (position := self._position(p)) is not None
            and position > self._committed.get(p, -1)
        }
        if not offsets:
            return
        if await commit_offsets(self.app, offsets):
            self._committed.update({tp.partition: offset for tp, offset in offsets.items()})

    def _position(self, partition: int) -> int | None:
        """Where the partition may be committed: the oldest position of every peer, or None
        while a peer has no frontier for it (its state is not loaded, or it already let go)."""
        positions = []
        for peer in self.peers:
            frontier = peer.frontiers.get(partition)
            position = None if frontier is None else frontier.position
            if position is None:
                return None
            positions.append(position)
        return min(positions)

    async def release(self, partitions: Iterable[int]) -> None:
        """Revocation: commit what is finished (best effort), then close the frontiers."""
        partitions = set(partitions)
        try:
            await self.commit(partitions)
        except Exception as exc:  # noqa: BLE001 - what is not committed is read again, never lost
            log.info("%s: commit before release failed: %s", self.topic, describe(exc))
        for partition in partitions:
            frontier = self.frontiers.pop(partition, None)
            if frontier is not None:
                frontier.close()  # late answers of this assignment can no longer move it
            if all(partition not in peer.frontiers for peer in self.peers):
                self._committed.pop(partition, None)
            self._wake(partition)

    async def close(self) -> None:
        """Stop: a last commit, then every frontier closed (idempotent)."""
        await self.release(list(self.frontiers))

    def _wake(self, partition: int) -> None:
        waiter = self._waiting.pop(partition, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
