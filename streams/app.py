"""The faust application: one per worker process, configured from Settings.

Every use of faust-streaming's (and aiokafka's consumer) private internals is here, read
against the versions in :data:`READ_AGAINST` (pinned in ``pyproject.toml``): the delivery loop
(:class:`_Consumer`), the read-committed worker consumer, the commit of given offsets
(:func:`commit_offsets`) and the group rejoin (:func:`request_rejoin`). :func:`missing_hooks`
names any that an installed release lacks; the worker refuses to start then, rather than
deliver or commit wrongly (``tests/streams/test_private_hooks.py`` checks the pins).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiokafka
import faust
from aiokafka.errors import KafkaConnectionError, KafkaError
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP, ChannelT, EventT, StreamT
from mode import Service, ServiceT

from streams.config import KafkaSettings

log = logging.getLogger(__name__)

#: faust's types as the worker's agents see them (``agents/``): this module is where faust is.
App = faust.App
__all__ = ["TP", "App", "ChannelT", "EventT", "StreamT", "commit_offsets", "create_app", "kafka_options",
           "missing_hooks", "request_rejoin", "run_worker"]  # fmt: skip

#: The releases whose private internals this module (and ``sinks/transactions.py``'s
#: ``_txn_manager``) was read against; ``pyproject.toml`` pins exactly these.
READ_AGAINST = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


async def commit_offsets(app: faust.App, offsets: dict[TP, int]) -> bool:
    """Commit exactly ``offsets`` through faust's own path for given offsets (assignment check,
    producer flush, commit with the group generation: a commit racing a rebalance is refused by
    the broker, never misapplied); whether it committed."""
    return bool(await app.consumer._commit_offsets(offsets))  # type: ignore[attr-defined]


def request_rejoin(app: faust.App) -> None:
    """Ask the group consumer to rejoin (a rebalance, then a fresh assignment), on the consumer
    thread's own loop, where faust-streaming runs it."""
    thread = app.consumer._thread  # type: ignore[attr-defined]
    coordinator = thread._ensure_consumer()._coordinator
    thread.thread_loop.call_soon_threadsafe(coordinator.request_rejoin)


def missing_hooks() -> list[str]:
    """The private attributes batchstream uses that the installed faust-streaming, mode and
    aiokafka lack (empty when every one is there)."""
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from aiokafka.producer.transaction_manager import TransactionManager
    from faust.transport.conductor import Conductor
    from faust.transport.consumer import Consumer

    wanted = {
        "faust Consumer._commit_offsets": (Consumer, "_commit_offsets"),
        "faust Consumer._drain_messages": (Consumer, "_drain_messages"),
        "faust Consumer._add_gap": (Consumer, "_add_gap"),
        "faust AIOKafkaConsumerThread._create_worker_consumer": (faust_kafka.AIOKafkaConsumerThread,
                                                                 "_create_worker_consumer"),
        "faust AIOKafkaConsumerThread._ensure_consumer": (faust_kafka.AIOKafkaConsumerThread, "_ensure_consumer"),
        "faust Conductor._tp_index": (Conductor, "_tp_index"),
        "faust Conductor._tp_to_callback_lock": (Conductor, "_tp_to_callback_lock"),
        "aiokafka GroupCoordinator.request_rejoin": (GroupCoordinator, "request_rejoin"),
        "aiokafka TransactionManager.is_fatal_error": (TransactionManager, "is_fatal_error"),
    }  # fmt: skip
    missing = [name for name, (owner, attribute) in wanted.items() if not _has(owner, attribute)]
    consumer = aiokafka.AIOKafkaConsumer.__init__.__code__.co_varnames
    if "isolation_level" not in consumer:
        missing.append("aiokafka AIOKafkaConsumer(isolation_level=...)")
    return missing


def _has(owner: type, attribute: str) -> bool:
    """A class attribute, or one its ``__init__`` sets (faust's conductor sets its own there)."""
    if hasattr(owner, attribute):
        return True
    init = getattr(owner, "__init__", None)
    code = getattr(init, "__code__", None)
    return code is not None and attribute in code.co_names


async def start_when_reachable(
    start: Callable[[], Awaitable[None]], undo: Callable[[], Awaitable[None]], what: str, timeout: float
) -> None:
    """``start()`` a Kafka client, again with backoff (1 s doubling to 30 s) while Kafka cannot be
    reached, for up to ``timeout`` seconds; ``undo()`` cleans up after each failed try. A broker
    that went away between the worker's topic checks and faust's start is waited for like one
    that was away from the first (``startup_timeout``)."""
    deadline, delay = time.monotonic() + timeout, 1.0
    while True:
        try:
            await start()
            return
        except KafkaError as exc:
            await undo()
            left = deadline - time.monotonic()
            if not (isinstance(exc, KafkaConnectionError) or getattr(exc, "retriable", False)) or left <= 0:
                raise
            log.warning("waiting for Kafka (%s): %s: %s; trying again in %.1fs", what, type(exc).__name__, exc,
                        min(delay, left))  # fmt: skip
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 30.0)


def broker_credentials(kafka: KafkaSettings) -> faust.auth.Credentials | None:
    if kafka.security_protocol.startswith("SASL"):
        assert kafka.sasl_mechanism and kafka.sasl_username and kafka.sasl_password
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=ssl.create_default_context() if kafka.security_protocol == "SASL_SSL" else None,
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(ssl.create_default_context())
    return None


class _Producer(faust_kafka.Producer):
    """faust's producer, whose start waits for Kafka (``startup_timeout``) instead of failing the worker."""

    async def on_start(self) -> None:
        async def undo() -> None:
            producer, self._producer = self._producer, None
            if producer is not None:
                await producer.stop()

        await start_when_reachable(super().on_start, undo, "faust's producer",
                                   cast(Transport, self.transport).startup_timeout)  # fmt: skip


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    """faust's consumer thread, whose consumer's start waits for Kafka like the producer's."""

    async def on_start(self) -> None:
        async def undo() -> None:
            if self._consumer is not None:
                await self._consumer.stop()

        await start_when_reachable(super().on_start, undo, "faust's consumer",
                                   cast(Transport, self.consumer.transport).startup_timeout)  # fmt: skip


class _ReadCommittedConsumerThread(_ConsumerThread):
    def _create_worker_consumer(self, transport: faust_kafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # faust reads read_committed only under its own transactions (its processing_guarantee),
        # which batchstream does not use: it keeps its own per input partition. aiokafka hands this
        # attribute, its constructor's ``isolation_level``, to the fetcher it builds on start.
        consumer._isolation_level = "read_committed"
        return consumer


class _Consumer(faust_kafka.Consumer):
    """faust's Kafka consumer, delivering a message without four tasks when nothing can hold it up.

    faust hands every fetched message to its conductor through ``wait_first(callback(message),
    suspend_flow.wait())``, which also waits on the consumer stopping or crashing: four tasks and
    three turns of the event loop per message, faust's largest cost per event. That wait only
    matters when delivery can block: a channel buffer full, flow control suspended (a
    rebalance), faust's producer buffer over its limit, the conductor's lock held (it re-indexes
    its subscriptions under it), or the consumer stopping. When none of
    those holds, the callback cannot block, and it is awaited directly; otherwise faust's wait
    is used as faust uses it. The method is faust-streaming 0.15's, otherwise unchanged.
    """

    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _delivers_at_once(self, tp: TP) -> bool:
        app = self.app
        if self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set():
            return False
        if not app.flow_control.is_active() or app.producer.buffer.size > app.producer.buffer.max_messages:
            return False
        conductor: Any = app.topics
        if conductor._tp_to_callback_lock.locked():  # the conductor is re-indexing its subscriptions
            return False
        return not any(channel.queue.full() for channel in conductor._tp_index.get(tp, ()))

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover - faust's, but for the delivery
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        at_once = self._delivers_at_once
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = cast(AsyncIterator[tuple[TP, Any]], getmany(timeout=1.0))
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            if at_once(tp):
                                await callback(message)
                            else:
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception:
            self.log.exception("Drain messages raised")
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class _ReadCommittedConsumer(_Consumer):
    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_kafka.Transport):
    """faust's Kafka transport with :class:`_Consumer`'s delivery, its clients waiting for
    Kafka at start for up to ``startup_timeout``."""

    Consumer = _Consumer
    Producer = _Producer
    startup_timeout: float = 300.0


class ReadCommittedTransport(Transport):
    """The same, its worker consumer reading ``isolation.level=read_committed``."""

    Consumer = _ReadCommittedConsumer


def kafka_options(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for every client beside faust's own (the worker's side consumers,
    producers and admin clients, and the operator commands')."""
    options: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context()
    if kafka.sasl_mechanism:
        assert kafka.sasl_password is not None
        options.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password.get_secret_value(),
        )
    return options


def create_app(
    kafka: KafkaSettings, *, partitions: int = 1, read_committed: bool = False, startup_timeout: float = 300.0
) -> faust.App:
    """A faust app tuned for micro-batching.

    - ``stream_wait_empty=False``: events sit unacked in open windows by design; a rebalance
      or shutdown must not wait for them (they are re-read by whoever owns the partition).
    - values are raw bytes in, so undecodable input can be dead-lettered with its bytes.
    - ``topic_allow_declare=False``: topics are created by the worker with explicit
      partition counts, never by faust's default of 8.
    - faust's data directory goes to the system temp dir: every table is in memory and all
      durable state is in Kafka, so nothing in it needs to survive (and the working
      directory may be read-only in a container).
    - ``read_committed``: the input is read with ``isolation.level=read_committed`` (under
      ``processing_guarantee: exactly_once``): events an upstream producer wrote in a
      transaction it aborted are never seen, so never paid for nor emitted.
    """
    servers = ";".join(f"kafka://{s.strip()}" for s in kafka.bootstrap_servers.split(","))
    app = faust.App(
        kafka.group_id,
        broker=servers,
        broker_credentials=broker_credentials(kafka),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        stream_wait_empty=False,
        broker_commit_interval=kafka.commit_interval,
        broker_session_timeout=kafka.session_timeout,
        broker_heartbeat_interval=kafka.heartbeat_interval,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
        autodiscover=False,
        datadir=Path(tempfile.gettempdir()) / f"batchstream-{kafka.group_id}",
    )
    transport = ReadCommittedTransport if read_committed else Transport
    app.transport = transport(app.conf.broker_consumer, app)
    app.transport.startup_timeout = startup_timeout
    return app


def run_worker(app: faust.App, *, loglevel: str, loop: asyncio.AbstractEventLoop) -> None:
    """Run ``app`` in the foreground on ``loop`` until SIGINT/SIGTERM."""
    faust.Worker(app, loglevel=loglevel, loop=loop, quiet=True).execute_from_commandline()
