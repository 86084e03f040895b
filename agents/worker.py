"""Build a faust worker from Settings: check and create topics, register pipelines, run."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import NamedTuple

from agents.health import Health
from agents.pipeline import Pipeline
from agents.quota import Quotas
from agents.webhooks import WebhookListener
from providers import make_provider
from sinks.limits import DEAD_LETTER_FLOOR, RecordLimits
from sinks.topics import TopicAdmin, TopicSpec, is_unreachable
from streams.app import READ_AGAINST, App, create_app, kafka_options, missing_hooks, run_worker
from streams.config import PipelineSettings, Settings
from streams.errors import ConfigError, Unreachable, UnsupportedRelease
from streams.topics import BrokerError

log = logging.getLogger(__name__)
#: Seconds between tries to reach Kafka at start-up: the first, and the most (doubling between).
STARTUP_BACKOFF = (1.0, 30.0)


class Topology(NamedTuple):
    """What start-up learned of the topics: each pipeline's input partition count, and the
    largest record each output and dead-letter topic takes."""

    partitions: dict[str, int]
    limits: RecordLimits


async def prepare_topics(settings: Settings) -> Topology:
    """Check every input topic exists; create output, dead-letter and state topics; read the
    limits of the topics written to.

    Output and dead-letter topics get the input's partition count; the state topic must have
    exactly that count (it is co-partitioned with the input) and be compacted with nothing
    deleted by retention (:func:`check_state_topic`).
    """
    servers = settings.kafka.bootstrap_servers
    admin = TopicAdmin(servers, kafka_options(settings.kafka))
    try:
        await admin.start()
    except BrokerError as exc:
        raise Unreachable(f"cannot reach Kafka at {servers}: {exc}") from None
    try:
        existing = await admin.partition_counts()
        counts: dict[str, int] = {}
        wanted: dict[str, TopicSpec] = {}
        for pipeline in settings.pipelines:
            n = existing.get(pipeline.input_topic)
            if n is None:
                raise ConfigError(
                    f"pipelines.{pipeline.name}.input_topic: topic {pipeline.input_topic!r} does not exist"
                )
            counts[pipeline.name] = n
            state = pipeline.state_topic_name
            if state in existing and existing[state] != n:
                raise ConfigError(
                    f"pipelines.{pipeline.name}.state_topic: {state!r} has {existing[state]} partitions, "
                    f"the input topic has {n}; they must match"
                )
            for name in (pipeline.output_topic, pipeline.dead_letter_topic):
                if name not in existing:
                    wanted[name] = TopicSpec(name, n, settings.kafka.replication_factor)
            if state not in existing:
                wanted[state] = TopicSpec(state, n, settings.kafka.replication_factor,
                                          {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"})  # fmt: skip
        if settings.webhooks is not None and settings.webhooks.topic not in existing:
            wanted[settings.webhooks.topic] = TopicSpec(settings.webhooks.topic, 1, settings.kafka.replication_factor)
        if wanted:
            refused = await admin.create(wanted.values())
            if refused:
                # e.g. INVALID_REPLICATION_FACTOR from a broker that restarted and has not
                # registered yet: waited for like an unreachable broker (startup_timeout)
                raise Unreachable(f"Kafka at {servers} did not create {refused}") from None
            log.info("created topics %s", sorted(wanted))
        written = {t for p in settings.pipelines for t in (p.output_topic, p.dead_letter_topic, p.state_topic_name)}
        configs = await admin.configs(written)
        limits = RecordLimits(bootstrap=servers, **kafka_options(settings.kafka))
        limits.learn(configs)
        for pipeline in settings.pipelines:
            check_state_topic(pipeline, configs.get(pipeline.state_topic_name, {}))
            dlq = pipeline.dead_letter_topic
            if limits.topic_bytes(dlq) < DEAD_LETTER_FLOOR:
                have = limits.topic_bytes(dlq)
                raise ConfigError(f"pipelines.{pipeline.name}.dead_letter_topic: topic {dlq!r} has max.message.bytes="
                                  f"{have}; a dead letter needs at least {DEAD_LETTER_FLOOR}")  # fmt: skip
        return Topology(counts, limits)
    except BrokerError as exc:
        if is_unreachable(exc):
            raise Unreachable(f"Kafka at {servers} did not answer: {type(exc).__name__}: {exc}") from None
        raise
    finally:
        await admin.close()


async def reach_kafka(settings: Settings, health: Health | None) -> Topology:
    """:func:`prepare_topics`, tried again with backoff while Kafka cannot be reached, for up to
    ``startup_timeout`` (a broker that starts after its workers is the usual case under an
    orchestrator); then :class:`Unreachable`. Configuration errors are raised at once."""
    deadline = time.monotonic() + settings.startup_timeout
    delay = STARTUP_BACKOFF[0]
    while True:
        try:
            return await prepare_topics(settings)
        except Unreachable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(f"{exc} (gave up after startup_timeout={settings.startup_timeout:g}s)") from None
            wait = min(delay, left)
            log.warning("waiting for Kafka: %s; trying again in %.1fs (startup_timeout ends in %.0fs)", exc, wait, left)
            if health is not None:
                health.starting = f"waiting for Kafka: {exc}"
            await asyncio.sleep(wait)
            delay = min(delay * 2, STARTUP_BACKOFF[1])


def check_state_topic(pipeline: PipelineSettings, config: dict[str, str]) -> None:
    """The state topic keeps each window's latest record until it is tombstoned: compacted, and
    no retention that may delete a record (a ``sealed`` window's events are already committed;
    its record is their only trace)."""
    name = pipeline.state_topic_name
    where = f"pipelines.{pipeline.name}.state_topic: topic {name!r}"
    policies = {p.strip() for p in config.get("cleanup.policy", "compact").split(",")}
    if "compact" not in policies:
        raise ConfigError(f"{where} has cleanup.policy={config.get('cleanup.policy')}; it must be compact (a "
                          "window's record must outlive the window, or its committed events are lost)")  # fmt: skip
    if "delete" in policies:
        for setting in ("retention.ms", "retention.bytes"):
            if config.get(setting, "-1") != "-1":
                raise ConfigError(f"{where} has cleanup.policy={config['cleanup.policy']} with {setting}="
                                  f"{config[setting]}: retention may delete a window's record while the window is "
                                  f"in flight; use cleanup.policy=compact, or {setting}=-1")  # fmt: skip


def build(settings: Settings, topology: Topology) -> tuple[App, list[Pipeline]]:
    partitions = topology.partitions
    app = create_app(
        settings.kafka,
        partitions=max(partitions.values()),
        read_committed=settings.processing_guarantee == "exactly_once",
        startup_timeout=settings.startup_timeout,
    )
    options = kafka_options(settings.kafka)
    pipelines: list[Pipeline] = []
    # A provider's enqueued-token quotas are shared by every pipeline it serves in this worker.
    quotas = {name: Quotas(p.max_enqueued_tokens) for name, p in settings.named_providers().items()}
    for cfg in settings.pipelines:
        name, provider = settings.provider_of(cfg)
        pipeline = Pipeline(
            app, settings, cfg, make_provider(name, provider),
            partitions=partitions[cfg.name], kafka_options=options, quotas=quotas[name], limits=topology.limits,
        )  # fmt: skip
        pipeline.register()
        for other in pipelines:  # pipelines of one input topic share its committed offsets
            if other.cfg.input_topic == cfg.input_topic:
                pipeline.commits.join(other.commits)
        pipelines.append(pipeline)
    return app, pipelines


#: The cyclic garbage collector's first-generation threshold. A worker allocates a few objects per
#: event, nearly all freed by reference counting; at Python's default (700) the collector runs
#: every few events and walks every window's requests each time it reaches the older generations.
GC_THRESHOLD = (50_000, 20, 100)


def run(settings: Settings, *, loglevel: str = "info") -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    missing = missing_hooks()
    if missing:
        raise UnsupportedRelease(f"the installed faust-streaming/aiokafka lack what batchstream relies on "
                                 f"({', '.join(missing)}); it was read against {READ_AGAINST}")  # fmt: skip
    gc.set_threshold(*GC_THRESHOLD)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    health: Health | None = None
    if settings.metrics_port:  # served from the start: /healthz answers, /readyz says what start-up waits for
        health = Health(bootstrap=settings.kafka.bootstrap_servers, kafka_options=kafka_options(settings.kafka))
        try:
            loop.run_until_complete(health.start(settings.metrics_host, settings.metrics_port))
        except OSError as exc:
            where = f"{settings.metrics_host}:{settings.metrics_port}"
            raise ConfigError(f"metrics_port: cannot serve on {where}: {exc.strerror or exc}") from None
    try:
        topology = loop.run_until_complete(reach_kafka(settings, health))
    except BaseException:
        if health is not None:
            loop.run_until_complete(health.stop())
        raise
    app, pipelines = build(settings, topology)
    if health is not None:
        health.attach(pipelines, list({p.client.name: p.client for p in pipelines}.values()))
        app.on_before_shutdown.connect(health.stop)
    if settings.webhooks is not None:
        listener = WebhookListener(settings.kafka.bootstrap_servers, settings.webhooks.topic,
                                   [p.watch for p in pipelines], kafka_options(settings.kafka))  # fmt: skip
        loop.run_until_complete(listener.start())
        app.on_before_shutdown.connect(listener.stop)
    gc.freeze()  # what start-up built lives as long as the process: no collection walks it again
    run_worker(app, loglevel=loglevel, loop=loop)
