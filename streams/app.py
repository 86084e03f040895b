"""The faust application: one per worker process, configured from Settings."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_kafka

from streams.config import KafkaSettings


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


class _ReadCommittedConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_kafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # faust reads read_committed only under its own transactions (its processing_guarantee),
        # which batchstream does not use: it keeps its own per input partition. aiokafka hands this
        # attribute, its constructor's ``isolation_level``, to the fetcher it builds on start.
        consumer._isolation_level = "read_committed"
        return consumer


class _ReadCommittedConsumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class ReadCommittedTransport(faust_kafka.Transport):
    """faust's Kafka transport, its worker consumer reading ``isolation.level=read_committed``."""

    Consumer = _ReadCommittedConsumer


def create_app(kafka: KafkaSettings, *, partitions: int = 1, read_committed: bool = False) -> faust.App:
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
    if read_committed:
        app.transport = ReadCommittedTransport(app.conf.broker_consumer, app)
    return app
