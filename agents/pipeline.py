"""A pipeline: Kafka events -> a batch lane or a flex lane -> results and dead letters.

The rooms, each in its own module:

- here: faust wiring, intake (decode -> dead-letter or skip a replay -> route), and handing
  rebalances and the stop on to the parts below;
- ``agents/commits.py``: the commit frontier of each owned input partition, committed by
  batchstream (never past an event whose fate is not durable);
- ``agents/batches.py``: open windows and sealing; ``agents/inflight.py``: one sealed
  window's life (submit or adopt, poll, hedge, settle, retry rounds), with the crash points;
- ``agents/flex.py``: one call per event, its fallbacks, and the flex lane;
- ``agents/outbox.py``: every result and dead letter, and the flush that gates finishing;
- ``agents/state.py``: window records in the state topic (the ledger);
- ``agents/tasks.py``: background tasks by input partition, revoked with it.

An intake event's life: entered in its partition's frontier; a rejection becomes a dead
letter and is finished once written; a replay of a recorded window is finished at once;
anything else is routed (``agents/routing.py``) to a lane, which finishes it once its fate
is durable.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.batches import BatchLane
from agents.commits import Commits
from agents.flex import FlexLane, FlexRunner
from agents.metrics import PipelineMetrics
from agents.outbox import Outbox
from agents.polling import BatchWatch
from agents.quota import Quotas
from agents.rounds import HeldRequests, InputReader
from agents.routing import route
from agents.services import WindowServices
from agents.state import Ledger
from agents.store import StateStore, TransactionalStore
from agents.tasks import PartitionTasks
from providers import Provider
from sinks import KafkaWriter, TopicSink
from sinks.limits import RecordLimits
from sinks.transactions import Transactions
from streams.app import TP, App, ChannelT, EventT, StreamT
from streams.config import PipelineSettings, Settings
from streams.models import Rejection, Request, Source, decode_event
from streams.offsets import Pending
from streams.pricing import Pricing
from streams.windows import WindowPolicy

log = logging.getLogger(__name__)

#: Events taken from the input channel between two yields to the event loop.
YIELD_EVERY = 200


class Pipeline:
    """One configured pipeline (any mode), wired into a faust app."""

    def __init__(
        self, app: App, settings: Settings, cfg: PipelineSettings, client: Provider, *,
        partitions: int, kafka_options: dict[str, Any], quotas: Quotas | None = None,
        limits: RecordLimits | None = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.cfg = cfg
        self.client = client
        provider = client.settings
        max_requests, max_bytes = provider.batch_limits
        self.policy = WindowPolicy.capped(
            max_requests=cfg.window.max_requests,
            max_bytes=cfg.window.max_bytes,
            max_wait=cfg.window.max_wait,
            provider_max_requests=max_requests,
            provider_max_bytes=max_bytes,
        )
        if not client.offers_flex and (cfg.mode != "batch" or cfg.max_batch_latency is not None):
            log.warning("%s: provider %r (kind: %s) has no flex tier: events routed to flex are served "
                        "by standard calls, at the standard (real-time) price",
                        cfg.name, client.name, provider.kind)  # fmt: skip
        self.commit_interval = settings.kafka.commit_interval
        # acks=False: faust records no ack for this topic at all (its pure-Python stream
        # iterator acks skipped events even on a noack stream), so nothing but the frontiers
        # can ever move its committed offsets.
        self.input = app.topic(cfg.input_topic, partitions=partitions, acks=False)
        self.metrics = PipelineMetrics(cfg.name)
        bootstrap = settings.kafka.bootstrap_servers
        limits = limits or RecordLimits(bootstrap=bootstrap, **kafka_options)
        self.writer = KafkaWriter(bootstrap, limits=limits, **kafka_options)
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        self.outbox = Outbox(
            cfg,
            TopicSink(self.writer, cfg.output_topic),
            TopicSink(self.writer, cfg.dead_letter_topic),
            self.metrics,
            provider=client.name,
            pricing=Pricing(settings.pricing, kinds=settings.kinds.values()),
            transactional=self.exactly_once,
        )
        state_topic = cfg.state_topic_name
        group = settings.kafka.group_id
        self.store: StateStore
        if self.exactly_once:
            # One transactional id per input partition: its next owner fences this worker's producer.
            txns = Transactions(f"batchstream.{group}.{cfg.name}.{cfg.input_topic}", bootstrap,
                                on_fenced=self._fenced, limits=limits, **kafka_options)  # fmt: skip
            self.store = TransactionalStore(state_topic, pipeline=cfg.name, txns=txns, input_topic=cfg.input_topic,
                                            bootstrap=bootstrap, group_id=group, **kafka_options)  # fmt: skip
        else:
            self.store = StateStore(state_topic, writer=self.writer, pipeline=cfg.name, input_topic=cfg.input_topic,
                                    bootstrap=bootstrap, group_id=group, **kafka_options)  # fmt: skip
        self.ledger = Ledger(self.store)
        self.commits = Commits(app, cfg.input_topic)
        self.tasks = PartitionTasks()
        runner = FlexRunner(cfg, client, self.metrics)
        #: Where rounds stage their files and download results; removed at stop.
        self.workdir = Path(tempfile.mkdtemp(prefix=f"batchstream-{cfg.name}-"))
        self.watch = BatchWatch(client, provider, cfg.retry, self.metrics)
        services = WindowServices(
            cfg=cfg, provider=provider, client=client, ledger=self.ledger, outbox=self.outbox,
            flex=runner, tasks=self.tasks,
            reader=InputReader(bootstrap, cfg.input_topic, read_committed=self.exactly_once, **kafka_options),
            workdir=self.workdir, metrics=self.metrics,
            watch=self.watch, quotas=quotas or Quotas(provider.max_enqueued_tokens),
            held=HeldRequests(cfg.max_held_requests, self.policy.max_requests, limit_bytes=cfg.max_held_bytes,
                              window_bytes=self.policy.max_bytes),
        )  # fmt: skip
        self.batches = BatchLane(services, self.policy)
        self.flex = FlexLane(runner, self.outbox, self.ledger, self.tasks, to_batch=self.batches.add)
        self._stopped = False
        self._assigned = False

    # -- wiring ---------------------------------------------------------------------------
    def register(self) -> None:
        self.app.agent(self.input, name=f"batchstream.{self.cfg.name}")(self._agent)
        self.app.timer(max(0.05, min(0.5, self.policy.max_wait / 4)))(self._tick)
        self.app.timer(self.commit_interval)(self._commit)
        # mode's Signal types receivers as taking ``signal=`` by keyword; ours accept **kwargs.
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        self.app.on_before_shutdown.connect(self.stop)

    async def _agent(self, stream: StreamT[Any]) -> None:
        """Take the events faust's conductor delivers to the topic's channel, in bulk.

        Not through faust's per-event stream step (a yield to the event loop, sensors, a
        context variable per event: more than batchstream's own work per event). What that step
        guards is kept: an event of an earlier group generation is stale (``Commits.ready``),
        and one delivered while faust's flow control is suspended (a rebalance) is skipped, as
        faust skips it: the partition's owner reads it again from the committed offset. Nothing
        is acked to faust (the topic has no acks): offsets are committed from the frontiers
        (``agents/commits.py``).
        """
        channel = stream.channel
        assert isinstance(channel, ChannelT)
        queue = channel.queue  # the subscribed channel's buffer; faust's fetcher pauses when it fills
        flow = self.app.flow_control
        try:
            while True:
                event = await queue.get()
                handled = 0
                while True:
                    if flow.is_active():
                        await self.handle(event)
                    handled += 1
                    if handled % YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # timers, provider calls and writes get their turn
                    if queue.empty():
                        break
                    event = queue.get_nowait()
        except StopAsyncIteration:  # faust ends the channel so at shutdown
            return

    async def _tick(self) -> None:
        await self.batches.tick()

    async def _commit(self) -> None:
        self.metrics.unfinished_events.set(self.commits.unfinished)
        await self.commits.commit()
        await self.ledger.prune(self.commits.committed)
        if isinstance(self.store, TransactionalStore):
            await self.store.prune(self.commits.committed, self.ledger.unpinned)

    def _fenced(self, partition: int) -> None:
        log.error("%s: partition %d's producer was fenced: nothing more is written for it by this worker until it "
                  "is assigned the partition again; rejoining the group", self.cfg.name, partition)  # fmt: skip
        # Another owner took it (this worker will be told so), or a transaction outlived the broker's
        # timeout while the partition is still ours: either way a new assignment starts afresh.
        self.commits.rejoin()

    # -- rebalance ------------------------------------------------------------------------
    def _mine(self, tps: set[TP]) -> set[int]:
        return {tp.partition for tp in tps if tp.topic == self.cfg.input_topic}

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def assignment(self) -> tuple[bool, int]:
        """(assigned and its state loaded, partitions owned): what readiness reads."""
        return self._assigned, len(self.ledger.partitions)

    async def _on_revoked(self, _sender: Any, *args: Any, **_: Any) -> None:
        self._assigned = False  # a rebalance: not ready until the next assignment is loaded
        partitions = self._mine(args[0])
        await self.commits.release(partitions)
        await self.batches.revoke(partitions)
        self.ledger.release(partitions)
        stopped = await self.tasks.revoke(partitions)
        await self.ledger.close(partitions)  # after the tasks: their last steps may still write
        self.metrics.owned_partitions.set(len(self.ledger.partitions))
        log.info("%s: released partitions %s (%d tasks stopped)", self.cfg.name, sorted(partitions), stopped)

    async def _on_assigned(self, _sender: Any, *args: Any, **_: Any) -> None:
        partitions = self._mine(args[0]) - self.ledger.partitions
        unfinished = await self.ledger.load(partitions)
        self.commits.open(partitions)
        self.batches.resume(unfinished)
        self.metrics.owned_partitions.set(len(self.ledger.partitions))
        self._assigned = True

    # -- intake ---------------------------------------------------------------------------
    async def handle(self, event: EventT[Any]) -> None:
        message = event.message
        frontier = self.commits.ready(event) or await self.commits.frontier_of(event)
        if frontier is None or not frontier.received(message.offset):
            return
        if self.ledger.was_served(message.partition, message.offset):
            frontier.finished(message.offset)  # replayed: its record was written with its served mark
            return
        if self.ledger.covers(message.partition, message.offset):
            frontier.finished(message.offset)  # replayed: already part of a recorded window
            return
        source = Source(message.topic, message.partition, message.offset, int(message.timestamp * 1000))
        self.metrics.events_in.inc()
        decoded = decode_event(self.cfg, source, message.key, message.value, message.headers)  # never raises
        nbytes = 0
        if isinstance(decoded, Request):
            nbytes = len(decoded.jsonl_line())
            if nbytes > self.policy.max_bytes:
                decoded = Rejection("oversized", f"request line of {nbytes} bytes exceeds max_bytes")
        lane: str | None = None
        if isinstance(decoded, Request):
            try:
                lane = route(self.cfg, decoded, now=time.time())
            except Exception as exc:  # noqa: BLE001 - one event's problem must never stop the stream
                decoded = Rejection("unprocessable", f"the event could not be routed: {type(exc).__name__}: {exc}")
        if isinstance(decoded, Rejection):
            unit = self.outbox.unit()
            unit.rejected(source, message.key, message.value, decoded)
            # while the broker is away, intake waits (until the partition is revoked)
            if await self.ledger.mark_until_written(source.partition, [source.offset], unit, source.default_id,
                                                    frontier=frontier):  # fmt: skip
                frontier.finished(message.offset)
            return
        pending = Pending(decoded, frontier, nbytes)
        if lane == "flex":
            await self.flex.add(pending)
        else:
            for window in self.batches.put(pending):  # the common case seals nothing: no await
                await self.batches.seal(window)

    async def stop(self, *_: Any, **__: Any) -> None:
        """Stop every task (idempotent); the state they left says where to resume.

        Steps that must not be cut short (batch creations, emission of finished batches) are
        awaited up to ``STEP_GRACE``, so whoever takes the partitions over neither duplicates
        a batch nor re-emits a finished one.
        """
        if self._stopped:
            return
        self._stopped = True
        # Frontiers first: a last commit, and from then on no window is sealed and no flex
        # call is started (both check the frontier), so nothing new outlives the stop.
        await self.commits.close()
        await self.tasks.close()
        await self.ledger.close(self.ledger.partitions)
        await self.client.close()
        await self.writer.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)  # the rounds' staged and downloaded files
