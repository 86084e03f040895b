"""A pipeline: Kafka events -> windows -> Batch API, or -> flex calls -> results and dead letters.

Each event is entered in its partition's commit frontier (``streams/offsets.py``) and
routed (``agents/routing.py``): batch events go to windows as below; flex events are served
one by one (``agents/flex.py``) under a concurrency limit, and are marked finished only once
their result or dead letter is written. A flex event whose fallback is ``batch`` joins a
window and is finished when the window is sealed. Offsets are committed from the frontiers
(``Pipeline.commit``), never past an event that is not finished.

With ``max_batch_latency``, a batch still unfinished that long after its window was first
submitted is cancelled (*hedged*): its finished part is emitted, the window is recorded as
``hedged`` with the offsets still owed, and those go flex; a restart re-reads them from the
record, so the finished part is never redone.

Where state lives and what happens at each crash point (see also ``agents/state.py``):

1. *Window open, nothing submitted.* Its events are not finished, so the group's
   committed offset stays before them; after a crash they are consumed again and re-windowed.
2. *Window sealed.* A ``sealed`` record (the intent, with the window's offset range) is
   written to the state topic and confirmed **before** the window's events are finished. From
   here the window is the state topic's responsibility, not the input offset's.
3. *Uploaded, or batch created but not recorded.* The batch's metadata carries
   ``batchstream_window = <window id>#r<round>``, and the record notes when the create call
   started (written before the call). A restarted owner that finds a ``sealed`` record
   lists recent batches for that tag and adopts the batch it finds. If a create call had
   started, it keeps looking until ``provider.create_timeout`` after that start (a create
   call never outlives it: it is abandoned then, without SDK retries), so a call still in
   flight at the provider when its owner died is adopted rather than duplicated. A worker
   that loses a partition also waits for its own create calls to return.
4. *Submitted, offsets not yet committed.* On replay the events fall inside a recorded
   window's range (same endpoint and model) and are skipped.
5. *Provider finished, output not (fully) downloaded.* Downloads stream to a temporary file
   and are checked (length, every line parses); a cut-off download is retried, and a restart
   simply downloads again.
6. *Results half emitted.* The record turns ``done`` only after every result and dead
   letter of the window is flushed; a crash in between re-emits the window's records on
   restart. Those duplicates carry the same ``id`` and ``task_version``: consumers dedupe
   on that pair.
7. *Rebalance.* Windows are per input partition and their records live in the same
   partition of the state topic, so whoever is assigned partition P reloads P's records and
   resumes P's in-flight batches. On revocation the frontier is committed and closed, open
   windows are dropped (their events were not finished) and trackers are cancelled; the
   state they left says where to resume.

8. *Flex event in flight.* It is not finished; after a crash it is consumed and served
   again (a result written just before the crash is then emitted twice, as in 6).

The events of a window restored from state are re-read from the input topic by offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import tempfile
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import faust
from faust.types import TP, EventT, StreamT
from openai.types import Batch

from agents import metrics
from agents.flex import Failed, FlexRunner, Served, ToBatch
from agents.outcomes import InvalidOutputError, backoff, classify, extract_output
from agents.provider import META_PIPELINE, META_WINDOW, TERMINAL, BatchClient, iter_jsonl
from agents.routing import route
from agents.state import InputReader, PartitionState, StateStore, WindowRecord, runs
from sinks import TopicSink
from streams.config import PipelineSettings, Settings
from streams.errors import ProviderBackpressure, ProviderError, ProviderRejected
from streams.models import (
    DeadLetter,
    Rejection,
    Request,
    Result,
    Source,
    SourceRecord,
    Timestamps,
    dead_letter_for,
    decode_event,
    task_version,
)
from streams.offsets import Frontier, Pending
from streams.windows import Window, Windower, WindowKey, WindowPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long an event delivered before its partition's state is loaded waits for the load.
ASSIGNMENT_WAIT = 120


class Pipeline:
    """One configured pipeline (any mode), wired into a faust app."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        pipeline: PipelineSettings,
        client: BatchClient,
        *,
        partitions: int,
        kafka_options: dict[str, Any],
    ) -> None:
        self.app = app
        self.cfg = pipeline
        self.client = client
        self.task_version = task_version(pipeline)
        limits = settings.provider.limits
        self.policy = WindowPolicy.capped(
            max_requests=pipeline.window.max_requests,
            max_bytes=pipeline.window.max_bytes,
            max_wait=pipeline.window.max_wait,
            provider_max_requests=limits.max_requests_per_batch,
            provider_max_bytes=limits.max_bytes_per_batch,
        )
        self.poll_interval = settings.provider.poll_interval
        self.input = app.topic(pipeline.input_topic, partitions=partitions)
        self.results = TopicSink(app.topic(pipeline.output_topic, value_serializer="orjson"))
        self.dead_letters = TopicSink(app.topic(pipeline.dead_letter_topic, value_serializer="orjson"))
        bootstrap = settings.kafka.bootstrap_servers
        self.state = StateStore(
            app.topic(pipeline.state_topic_name, partitions=partitions),
            input_topic=pipeline.input_topic,
            bootstrap=bootstrap,
            group_id=settings.kafka.group_id,
            **kafka_options,
        )
        self.reader = InputReader(bootstrap, pipeline.input_topic, **kafka_options)
        self.windower: Windower[Pending] = Windower(self.policy)
        self.slots = asyncio.Semaphore(pipeline.max_open_batches)
        self.cancel_wait = settings.provider.cancel_wait
        self.create_timeout = settings.provider.create_timeout
        self._labels = {"pipeline": pipeline.name}
        self.flex = FlexRunner(pipeline, client, self._labels)
        self.owned: dict[int, PartitionState] = {}
        self.trackers: dict[str, asyncio.Task[None]] = {}
        #: Flex events being served, per input partition (cancelled when it is revoked).
        self.flex_tasks: dict[int, set[asyncio.Task[None]]] = {}
        #: Steps that must not be abandoned half-way, by input partition (see ``_shielded``).
        self._critical: dict[asyncio.Future[Any], int] = {}
        self._stopped = False
        self._lock = asyncio.Lock()
        #: One commit frontier per owned input partition (``streams/offsets.py``).
        self.frontiers: dict[int, Frontier] = {}
        #: Events delivered before our assignment handler finished wait on these.
        self._assigned: dict[int, asyncio.Future[None]] = {}
        self.commit_interval = settings.kafka.commit_interval
        self._committed: dict[int, int] = {}
        self._workdir = Path(tempfile.mkdtemp(prefix=f"batchstream-{pipeline.name}-"))

    # -- wiring ---------------------------------------------------------------------------
    def register(self) -> None:
        self.app.agent(self.input, name=f"batchstream.{self.cfg.name}")(self._agent)
        self.app.timer(max(0.05, min(0.5, self.policy.max_wait / 4)))(self._tick)
        self.app.timer(self.commit_interval)(self._commit_tick)
        # mode's Signal types receivers as taking ``signal=`` by keyword; ours accept **kwargs.
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        self.app.on_before_shutdown.connect(self.stop)

    async def _agent(self, stream: StreamT[Any]) -> None:
        # No event is ever acked to faust, so faust's own commit arithmetic (which commits
        # past unacked offsets when acks come out of order) never has anything to commit:
        # offsets are committed by ``commit`` below, from the frontiers alone.
        async for event in cast("faust.Stream[Any]", stream).noack().events():
            await self.handle(event)

    async def _commit_tick(self) -> None:
        await self.commit()

    async def commit(self, partitions: set[int] | None = None) -> None:
        """Commit each owned partition's frontier: never past an event whose fate is not durable.

        Runs every ``kafka.commit_interval``, before partitions are released and at stop.
        Goes through the faust consumer, which commits with the group's current
        generation: a commit racing a rebalance is refused by the broker, never misapplied.
        """
        offsets = {
            TP(self.cfg.input_topic, p): position
            for p, frontier in self.frontiers.items()
            if (partitions is None or p in partitions)
            and (position := frontier.position) is not None
            and position > self._committed.get(p, -1)
        }
        if not offsets:
            return
        # faust's own commit path for given offsets (assignment check, producer flush,
        # commit with the group generation); faust-streaming is pinned to 0.15.x for it.
        if await self.app.consumer._commit_offsets(offsets):  # type: ignore[attr-defined]
            self._committed.update({tp.partition: offset for tp, offset in offsets.items()})

    # -- rebalance ------------------------------------------------------------------------
    def _mine(self, tps: set[TP]) -> set[int]:
        return {tp.partition for tp in tps if tp.topic == self.cfg.input_topic}

    async def _on_revoked(self, _sender: Any, *args: Any, **_: Any) -> None:
        revoked: set[TP] = args[0]
        partitions = self._mine(revoked)
        with contextlib.suppress(Exception):  # best effort: what is not committed is read again
            await self.commit(partitions)
        async with self._lock:
            for partition in partitions:
                self.windower.drop_partition(partition)
                self.owned.pop(partition, None)
                frontier = self.frontiers.pop(partition, None)
                if frontier is not None:
                    frontier.close()  # late answers of this assignment can no longer move it
                self._committed.pop(partition, None)
                self._wake(partition)
        doomed = [t for wid, t in self.trackers.items() if _partition_of(wid) in partitions]
        for partition in partitions:
            doomed.extend(self.flex_tasks.pop(partition, ()))
        for task in doomed:
            task.cancel()
        if doomed:
            await asyncio.wait(doomed, timeout=30)
        critical = [step for step, p in self._critical.items() if p in partitions]
        if critical:
            # finish creating batches and emitting results before the next owner looks
            await asyncio.wait(critical, timeout=30)
        log.info("%s: released partitions %s (%d tasks stopped)", self.cfg.name, sorted(partitions), len(doomed))

    async def _on_assigned(self, _sender: Any, *args: Any, **_: Any) -> None:
        assigned: set[TP] = args[0]
        partitions = self._mine(assigned) - set(self.owned)
        states = await self.state.load(partitions)
        async with self._lock:
            self.owned.update(states)
            for partition in states:
                self.frontiers[partition] = Frontier()
                self._wake(partition)
        for state in states.values():
            for record in state.unfinished():
                self._track(record, None, slot_held=False)
        metrics.OWNED_PARTITIONS.labels(**self._labels).set(len(self.owned))

    def _wake(self, partition: int) -> None:
        waiter = self._assigned.pop(partition, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _frontier_of(self, event: EventT[Any]) -> Frontier | None:
        """The frontier of the event's partition, once our assignment handler has loaded it.

        None when the event is stale: its partition was revoked while it waited, so it is
        left for whoever owns the partition now (it was never marked finished).
        """
        message = event.message
        frontier = self.frontiers.get(message.partition)
        if frontier is not None:
            return frontier
        waiter = self._assigned.setdefault(message.partition, asyncio.get_running_loop().create_future())
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=ASSIGNMENT_WAIT)
        except TimeoutError:
            log.warning("%s: partition %d was not loaded within %ds; leaving offset %d unread",
                        self.cfg.name, message.partition, ASSIGNMENT_WAIT, message.offset)  # fmt: skip
            return None
        generation = getattr(message, "generation_id", None)
        if generation is not None and generation != self.app.consumer_generation_id:
            return None  # delivered in an earlier generation of the group
        return self.frontiers.get(message.partition)

    # -- ingest ---------------------------------------------------------------------------
    async def handle(self, event: EventT[Any]) -> None:
        message = event.message
        partition = message.partition
        frontier = await self._frontier_of(event)
        if frontier is None or not frontier.received(message.offset):
            return
        source = Source(message.topic, partition, message.offset, int(message.timestamp * 1000))
        metrics.EVENTS_IN.labels(**self._labels).inc()
        decoded = decode_event(self.cfg, source, message.key, message.value, message.headers)
        nbytes = 0
        if isinstance(decoded, Request):
            nbytes = len(decoded.jsonl_line())
            if nbytes > self.policy.max_bytes:
                decoded = Rejection("oversized", f"request line of {nbytes} bytes exceeds max_bytes")
        if isinstance(decoded, Rejection):
            self.dead_letters.add(dead_letter_for(self.cfg, source, message.value, decoded), key=message.key)
            await self.dead_letters.flush()
            metrics.DEAD_LETTERS.labels(reason=decoded.reason, **self._labels).inc()
            frontier.finished(message.offset)
            return
        if self.owned[partition].covers(decoded):
            frontier.finished(message.offset)  # replayed: already part of a recorded window
            return
        pending = Pending(decoded, frontier, nbytes)
        if route(self.cfg, decoded, now=time.time()) == "flex":
            await self._start_flex(pending)
        else:
            await self._to_window(pending)

    async def _to_window(self, pending: Pending) -> None:
        request = pending.request
        key = WindowKey(request.source.partition, request.endpoint, request.model)
        async with self._lock:
            sealed = self.windower.add(key, pending, request.custom_id, pending.nbytes, time.monotonic())
        for window in sealed:
            await self._seal(window)

    # -- flex -----------------------------------------------------------------------------
    async def _start_flex(self, pending: Pending) -> None:
        await self.flex.slots.acquire()  # full: consumption waits here (bounded memory)
        partition = pending.request.source.partition
        if pending.frontier.closed:  # revoked while we waited: the new owner serves it
            self.flex.slots.release()
            return
        task = asyncio.create_task(self._serve_flex(pending), name=f"flex:{pending.request.custom_id}")
        tasks = self.flex_tasks.setdefault(partition, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _serve_flex(self, pending: Pending) -> None:
        request = pending.request
        metrics.FLEX_IN_FLIGHT.labels(**self._labels).inc()
        try:
            outcome = await self._serve_retrying(request)
        finally:
            metrics.FLEX_IN_FLIGHT.labels(**self._labels).dec()
            self.flex.slots.release()
        if isinstance(outcome, ToBatch):
            await self._to_window(pending)  # finished when its window is sealed
            return
        self._emit_single(request, outcome, batch_id=None, submitted=None, rounds=0)
        await self._flush_until_written(request.id)
        pending.frontier.finished(request.source.offset)

    async def _serve_retrying(self, request: Request) -> Served | Failed | ToBatch:
        deadline = time.time() + self.cfg.flex.budget
        failures = 0
        while True:
            try:
                return await self.flex.serve(request, deadline=deadline)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an event must never be left unfinished
                failures += 1
                delay = backoff(failures, initial=1.0, maximum=60.0)
                log.warning("%s: flex serving failed (%s); retrying in %.1fs", request.id, _describe(exc), delay)
                await asyncio.sleep(delay)

    def _emit_single(
        self, request: Request, outcome: Served | Failed, *, batch_id: str | None, submitted: float | None, rounds: int
    ) -> None:
        """A result or dead letter for one event served synchronously."""
        if isinstance(outcome, Failed):
            self._dead_letter(request, outcome.reason, outcome.message, rounds + outcome.attempts, batch_id,
                              outcome.error)  # fmt: skip
            return
        try:
            output = extract_output(request.endpoint, outcome.body, request.wants_json)
        except InvalidOutputError as exc:
            self._dead_letter(request, "invalid_output", str(exc), rounds + outcome.attempts, batch_id,
                              {"response": outcome.body})  # fmt: skip
            return
        timestamps = {"submitted": submitted or outcome.started, "completed": outcome.finished}
        self._result(request, outcome.body, output, batch_id, timestamps, mode=outcome.mode, tier=outcome.tier)

    async def _flush_until_written(self, what: str) -> None:
        """Flush the sinks, retrying: the caller finishes an event only after this returns."""
        failures = 0
        while True:
            try:
                await self._flush()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the record must be written before the event is finished
                failures += 1
                delay = backoff(failures, initial=0.5, maximum=30.0)
                log.warning("%s: writing its record failed (%s); retrying in %.1fs", what, _describe(exc), delay)
                await asyncio.sleep(delay)

    async def _tick(self) -> None:
        async with self._lock:
            due = self.windower.due(time.monotonic())
        for window in due:
            await self._seal(window)

    async def _seal(self, window: Window[Pending]) -> None:
        """Record the window durably, then finish its events and hand it to a tracker."""
        await self.slots.acquire()  # full: consumption waits here (bounded memory)
        partition = window.key.partition
        state = self.owned.get(partition)
        if state is None or window.items[0].frontier.closed:
            # revoked (perhaps assigned again since): its events are read again from the
            # committed offset by whoever owns the partition now
            self.slots.release()
            return
        offsets = [p.request.source.offset for p in window.items]
        # The digest keeps window ids (the state topic's keys) distinct across input topics
        # and groups sharing a state topic, so compaction never merges two owners' records.
        owner = f"{self.cfg.input_topic}|{self.state.group_id}|{window.key.endpoint}|{window.key.model}"
        digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
        record = WindowRecord(
            window_id=f"{self.cfg.name}.p{partition}.{min(offsets)}-{max(offsets)}.{digest}",
            pipeline=self.cfg.name,
            input_topic=self.cfg.input_topic,
            group_id=self.state.group_id,
            partition=partition,
            endpoint=window.key.endpoint,
            model=window.key.model,
            first_offset=min(offsets),
            last_offset=max(offsets),
            count=len(offsets),
            members=None if max(offsets) - min(offsets) + 1 == len(offsets) else runs(offsets),
            status="sealed",
            sealed_at=time.time(),
        )
        try:
            await self.state.put(record)
        except BaseException:
            self.slots.release()
            raise
        state.put(record)
        for pending in window.items:
            pending.frontier.finished(pending.request.source.offset)
        metrics.WINDOWS_SEALED.labels(**self._labels).inc()
        self._track(record, [p.request for p in window.items], slot_held=True)

    # -- tracking -------------------------------------------------------------------------
    def _track(self, record: WindowRecord, requests: list[Request] | None, *, slot_held: bool) -> None:
        task = asyncio.create_task(self._run(record, requests, slot_held), name=record.window_id)
        self.trackers[record.window_id] = task
        task.add_done_callback(
            lambda t: self.trackers.pop(record.window_id, None) if self.trackers.get(record.window_id) is t else None
        )

    async def _run(self, record: WindowRecord, requests: list[Request] | None, slot_held: bool) -> None:
        if not slot_held:
            await self.slots.acquire()
        metrics.BATCHES_IN_FLIGHT.labels(**self._labels).inc()
        restored = requests is None
        failures = 0
        try:
            while record.status != "done":
                try:
                    if requests is None:
                        requests = await self._reread(record)
                    if record.status == "sealed":
                        record = await self._submit(record, requests, look_first=restored)
                    elif record.status == "hedged":
                        record, requests = await self._hedge(record, requests)
                    else:
                        record, requests = await self._finish(record, requests)
                    restored, failures = False, 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a window must never be dropped
                    failures += 1
                    delay = backoff(failures, initial=1.0, maximum=60.0)
                    log.warning("%s: %s; retrying in %.1fs", record.window_id, _describe(exc), delay)
                    restored = True  # we may not know whether the last call took effect
                    await asyncio.sleep(delay)
        finally:
            metrics.BATCHES_IN_FLIGHT.labels(**self._labels).dec()
            self.slots.release()

    async def _reread(self, record: WindowRecord) -> list[Request]:
        rows = await self.reader.read(record.partition, record.first_offset, record.last_offset)
        requests = []
        belongs = record.round_filter()
        for offset, ts, key, value in rows:
            source = Source(self.cfg.input_topic, record.partition, offset, ts)
            decoded = decode_event(self.cfg, source, key, value)
            if isinstance(decoded, Request) and belongs(decoded):
                requests.append(decoded)
        return requests

    async def _submit(self, record: WindowRecord, requests: Sequence[Request], *, look_first: bool) -> WindowRecord:
        batch: Batch | None = None
        if look_first:
            batch = await self._find_created(record)
            if batch is not None:
                log.info("%s: adopted batch %s created before a restart", record.window_id, batch.id)
        if batch is None:
            record, batch = await self._create(record, requests)
        now = time.time()
        record = record.model_copy(update={
            "status": "submitted", "batch_id": batch.id, "submitted_at": now,
            "first_submitted_at": record.first_submitted_at or now,
        })  # fmt: skip
        await self.state.put(record)
        self._put_local(record)
        metrics.BATCHES_SUBMITTED.labels(**self._labels).inc()
        return record

    async def _find_created(self, record: WindowRecord) -> Batch | None:
        """The batch of this window round, if a create call (ours or a previous owner's) made it.

        A create call recorded as started may still be in flight at the provider (its
        owner crashed or lost the partition mid-call): until ``create_timeout`` after it
        started, keep looking before concluding that no batch exists.
        """
        created_after = record.sealed_at - 300
        batch = await self.client.find(record.tag, created_after=created_after)
        if batch is not None or record.create_started_at is None or not self.client.can_list:
            return batch
        settle_at = record.create_started_at + self.create_timeout
        if time.time() < settle_at:
            log.info("%s: a create call may still be in flight; looking for its batch until it times out",
                     record.window_id)  # fmt: skip
        while batch is None and time.time() < settle_at:
            await asyncio.sleep(min(self.poll_interval, max(0.05, settle_at - time.time())))
            batch = await self.client.find(record.tag, created_after=created_after)
        return batch

    async def _create(self, record: WindowRecord, requests: Sequence[Request]) -> tuple[WindowRecord, Batch]:
        path = self._workdir / f"{record.window_id}.r{record.round}.jsonl"
        with path.open("wb") as fh:
            for request in requests:
                fh.write(request.jsonl_line())
        try:
            file_id = await self.client.upload(path)
        finally:
            path.unlink(missing_ok=True)
        metadata = {**self.cfg.metadata, META_PIPELINE: self.cfg.name, META_WINDOW: record.tag}
        attempt = 0
        while True:
            # Recorded before the call: whoever resumes this window knows a batch may exist.
            record = record.model_copy(update={"create_started_at": time.time()})
            await self.state.put(record)
            self._put_local(record)
            try:
                batch = await self._shielded(record.partition, self.client.create(file_id, record.endpoint, metadata))
                return record, batch
            except ProviderBackpressure as exc:
                attempt += 1
                delay = exc.retry_after or backoff(
                    attempt, initial=self.cfg.retry.backoff_initial, maximum=self.cfg.retry.backoff_max
                )
                metrics.BACKPRESSURE.labels(**self._labels).inc()
                log.info("%s: provider refused the batch (%s); waiting %.1fs", record.window_id, exc, delay)
                await asyncio.sleep(delay)

    def _hedge_at(self, record: WindowRecord) -> float | None:
        if self.cfg.max_batch_latency is None or record.first_submitted_at is None:
            return None
        return record.first_submitted_at + self.cfg.max_batch_latency

    def _shielded(self, partition: int, step: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run a step that must not be abandoned half-way; ``_on_revoked`` and ``stop`` wait for it.

        Two steps are: a batch-create call (cancelled mid-flight, the provider could still
        create the batch after the partition's next owner had looked for it, and the window
        would be submitted twice) and the emission of a finished batch's records with the
        state write that follows (cut short, the next owner would emit them again).
        """
        task = asyncio.ensure_future(step)
        self._critical[task] = partition
        task.add_done_callback(self._step_done)
        return asyncio.shield(task)

    def _step_done(self, task: asyncio.Future[Any]) -> None:
        self._critical.pop(task, None)
        if not task.cancelled():
            task.exception()  # retrieved here: the tracker that started it may be gone

    async def _wait(self, record: WindowRecord) -> tuple[Batch, bool]:
        """Poll until the batch ends; at ``max_batch_latency`` cancel it. Return (batch, hedged)."""
        assert record.batch_id is not None
        hedge_at = self._hedge_at(record)
        while True:
            batch = await self.client.retrieve(record.batch_id)
            late = hedge_at is not None and time.time() >= hedge_at
            if batch.status in TERMINAL:
                return batch, late
            if late:
                return await self._cancel(batch), True
            pause = (
                self.poll_interval if hedge_at is None else min(self.poll_interval, max(0.05, hedge_at - time.time()))
            )
            await asyncio.sleep(pause)

    async def _cancel(self, batch: Batch) -> Batch:
        """Cancel a late batch and wait up to ``cancel_wait`` for its finished part to be final."""
        metrics.BATCHES_HEDGED.labels(**self._labels).inc()
        log.info("%s: batch %s passed max_batch_latency; cancelling it", self.cfg.name, batch.id)
        try:
            batch = await self.client.cancel(batch.id)
        except ProviderRejected:
            pass  # it ended meanwhile
        give_up = time.monotonic() + self.cancel_wait
        while batch.status not in TERMINAL and time.monotonic() < give_up:
            await asyncio.sleep(min(self.poll_interval, 1.0))
            batch = await self.client.retrieve(batch.id)
        return batch

    async def _finish(self, record: WindowRecord, requests: list[Request]) -> tuple[WindowRecord, list[Request]]:
        assert record.batch_id is not None
        batch, hedged = await self._wait(record)
        timestamps = {"submitted": float(batch.created_at), "completed": float(_completed_at(batch))}
        if batch.status == "failed":
            errors = [e.model_dump() for e in (batch.errors.data if batch.errors and batch.errors.data else [])]
            if any(e.get("code") == "token_limit_exceeded" for e in errors):
                delay = backoff(
                    record.round, initial=self.cfg.retry.backoff_initial, maximum=self.cfg.retry.backoff_max
                )
                metrics.BACKPRESSURE.labels(**self._labels).inc()
                log.info("%s: token_limit_exceeded; resubmitting in %.1fs", record.window_id, delay)
                await asyncio.sleep(delay)
                return await self._next_round(record, requests, same_round=True), requests
            message = "; ".join(str(e.get("message") or e.get("code")) for e in errors) or "batch failed"

            async def fail_all() -> tuple[WindowRecord, list[Request]]:
                for request in requests:
                    self._dead_letter(request, "batch_failed", f"batch {batch.id} failed: {message}",
                                      record.round, batch.id, {"batch_errors": errors})  # fmt: skip
                await self._flush()
                return await self._done(record), []

            return await self._shielded(record.partition, fail_all())
        lines: dict[str, dict[str, Any]] = {}
        # A batch still cancelling after cancel_wait gives nothing: all of it goes flex.
        files = (batch.output_file_id, batch.error_file_id) if batch.status in TERMINAL else ()
        for file_id in files:
            if file_id:
                path = self._workdir / f"{file_id}.jsonl"
                try:
                    await self.client.download(file_id, path)
                    for line in iter_jsonl(path):
                        if isinstance(line, dict) and "custom_id" in line:
                            lines[str(line["custom_id"])] = line
                finally:
                    path.unlink(missing_ok=True)
        settle = self._shielded(record.partition, self._settle(record, batch, requests, lines, hedged, timestamps))
        record, retry = await settle
        if record.status == "sealed":  # a retry round, recorded: back off before submitting it
            delay = backoff(
                record.round - 1, initial=self.cfg.retry.backoff_initial, maximum=self.cfg.retry.backoff_max
            )
            log.info("%s: %d requests to retry (round %d) in %.1fs", record.window_id, len(retry), record.round, delay)
            await asyncio.sleep(delay)
        return record, retry

    async def _settle(
        self, record: WindowRecord, batch: Batch, requests: list[Request], lines: dict[str, dict[str, Any]],
        hedged: bool, timestamps: dict[str, float],
    ) -> tuple[WindowRecord, list[Request]]:  # fmt: skip
        """Emit a finished batch's records, then record what comes next: done, a retry round, or hedged."""
        retry: list[Request] = []
        for request in requests:
            outcome = classify(lines.get(request.custom_id))
            if outcome.kind == "ok":
                assert outcome.body is not None
                try:
                    output = extract_output(record.endpoint, outcome.body, request.wants_json)
                except InvalidOutputError as exc:
                    self._dead_letter(
                        request, "invalid_output", str(exc), record.round, batch.id, {"response": outcome.body}
                    )
                    continue
                self._result(request, outcome.body, output, batch.id, timestamps)
            elif outcome.kind == "retry" and (hedged or record.round < self.cfg.retry.attempts):
                retry.append(request)
            elif outcome.kind == "retry":
                self._dead_letter(request, "retries_exhausted", outcome.message, record.round, batch.id, outcome.error)
            else:
                self._dead_letter(request, "provider_rejected", outcome.message, record.round, batch.id, outcome.error)
        await self._flush()
        if retry and hedged:
            record = record.model_copy(update={"status": "hedged", "offsets": sorted(r.source.offset for r in retry)})
            await self.state.put(record)
            self._put_local(record)
            return record, retry
        if retry:
            return await self._next_round(record, retry), retry
        return await self._done(record), []

    async def _hedge(self, record: WindowRecord, requests: list[Request]) -> tuple[WindowRecord, list[Request]]:
        """Serve what a late batch still owes through flex (then the fallback), then finish."""
        deadline = time.time() + self.cfg.flex.budget
        submitted = record.first_submitted_at

        async def serve(request: Request) -> None:
            async with self.flex.slots:
                outcome = await self.flex.serve(request, deadline=deadline, allow_batch=False)
            assert not isinstance(outcome, ToBatch)
            self._emit_single(request, outcome, batch_id=record.batch_id, submitted=submitted, rounds=record.round)

        log.info("%s: serving %d unfinished requests through flex", record.window_id, len(requests))
        await asyncio.gather(*(serve(r) for r in requests))
        await self._flush()
        return await self._done(record), []

    async def _next_round(
        self, record: WindowRecord, requests: list[Request], *, same_round: bool = False
    ) -> WindowRecord:
        record = record.model_copy(update={
            "status": "sealed",
            "batch_id": None,
            "round": record.round if same_round else record.round + 1,
            "offsets": sorted(r.source.offset for r in requests),
            "sealed_at": time.time(),
            "create_started_at": None,
        })  # fmt: skip
        await self.state.put(record)
        self._put_local(record)
        return record

    async def _done(self, record: WindowRecord) -> WindowRecord:
        record = record.model_copy(update={"status": "done", "offsets": None})
        await self.state.put(record)
        self._put_local(record)
        metrics.BATCHES_DONE.labels(**self._labels).inc()
        return record

    def _put_local(self, record: WindowRecord) -> None:
        state = self.owned.get(record.partition)
        if state is not None:
            state.put(record)

    # -- output ---------------------------------------------------------------------------
    async def _flush(self) -> None:
        await self.results.flush()
        await self.dead_letters.flush()

    def _result(
        self, request: Request, body: dict[str, Any], output: Any, batch_id: str | None,
        timestamps: dict[str, float], *, mode: str = "batch", tier: str | None = "batch",
    ) -> None:  # fmt: skip
        received = request.source.timestamp_ms / 1000 if request.source.timestamp_ms else None
        result = Result(
            id=request.id,
            pipeline=self.cfg.name,
            task_version=self.task_version,
            mode=mode,
            batch_id=batch_id,
            service_tier=tier,
            output=output,
            response=body,
            usage=body.get("usage"),
            source=_source_record(request.source),
            timestamps=Timestamps(received=received, **timestamps),
        )
        self.results.add(result, key=request.key)
        metrics.RESULTS.labels(**self._labels).inc()

    def _dead_letter(
        self, request: Request, reason: Any, message: str, attempts: int,
        batch_id: str | None, error: dict[str, Any] | None,
    ) -> None:  # fmt: skip
        letter = DeadLetter(
            id=request.id,
            pipeline=self.cfg.name,
            reason=reason,
            message=message,
            attempts=attempts,
            batch_id=batch_id,
            error=error,
            event=request.event,
            source=_source_record(request.source),
        )
        self.dead_letters.add(letter, key=request.key)
        metrics.DEAD_LETTERS.labels(reason=reason, **self._labels).inc()

    async def stop(self, *_: Any, **__: Any) -> None:
        """Stop trackers and flex calls (idempotent); their state says where to resume.

        Steps that must not be cut short (batch creations, emission of finished batches) are
        awaited up to 30 s, so whoever takes the partitions over neither duplicates a batch
        nor re-emits a finished one.
        """
        if self._stopped:
            return
        self._stopped = True
        tasks = [*self.trackers.values(), *(t for ts in self.flex_tasks.values() for t in ts)]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._critical:
            await asyncio.wait(list(self._critical), timeout=30)
        try:
            await self.commit()
        except Exception as exc:  # noqa: BLE001 - stopping anyway; the next owner reads from the last commit
            log.warning("%s: final commit failed: %s", self.cfg.name, _describe(exc))
        for frontier in self.frontiers.values():
            frontier.close()
        await self.client.close()


def _source_record(source: Source) -> SourceRecord:
    return SourceRecord(topic=source.topic, partition=source.partition, offset=source.offset)


def _partition_of(window_id: str) -> int:
    # window ids look like "<pipeline>.p<partition>.<first>-<last>.<digest>"
    return int(window_id.rsplit(".", 3)[-3].removeprefix("p"))


def _completed_at(batch: Batch) -> int:
    for value in (batch.completed_at, batch.expired_at, batch.cancelled_at, batch.failed_at):
        if value:
            return value
    return int(time.time())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ProviderError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
