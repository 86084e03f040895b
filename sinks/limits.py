"""How large a record each output topic accepts, known before anything is sent.

A record larger than its topic's ``max.message.bytes`` (or the producer's
``max_request_size``) is refused by the broker, and a refused write retried as it is would be
refused for ever, holding every event behind it. So the outbox asks :class:`RecordLimits`
before it adds a record, and writes something that fits instead (``agents/outbox.py``:
a ``result_too_large`` dead letter, or a dead letter whose original is a reference).

The limits are read from the broker at start-up (``kafka.bootstrap_servers``, the topics'
effective configs); a size refusal at run time (the topic's config lowered meanwhile) reads
them again, and when the broker still refuses a record within them, the limit drops below
that record, so a retried write always makes progress.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

log = logging.getLogger(__name__)

#: aiokafka's producer default (``max_request_size``): a cap on any one record it sends.
PRODUCER_MAX_REQUEST = 1_048_576
#: The broker's default ``message.max.bytes`` (a topic's ``max.message.bytes`` when not set).
BROKER_DEFAULT = 1_048_588
#: Bytes kept free in a batch for its header and a record's framing (key length aside).
FRAMING = 512
#: The most bytes a batch holds before any refusal (``sinks.base.BATCH_BYTES``).
BATCH_CEILING = 1_000_000
#: The least ``max.message.bytes`` a dead-letter topic may have: a dead letter's reference
#: form (``streams/letters.py``) always fits it.
DEAD_LETTER_FLOOR = 4_096 + FRAMING

#: Errors with which a broker (or the producer) refuses a record or batch for its size.
SIZE_ERRORS: tuple[type[Exception], ...] = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


class SizeRefused(Exception):
    """The broker refused a write to ``topic`` for its size; ``largest``: the largest record
    (key and value bytes) of that write. Raised from the broker's error."""

    def __init__(self, topic: str, largest: int) -> None:
        super().__init__(f"the broker refused a record for {topic!r} as too large (largest record: {largest} bytes)")
        self.topic = topic
        self.largest = largest


async def topic_configs(admin: AIOKafkaAdminClient, topics: Iterable[str]) -> dict[str, dict[str, str]]:
    """The effective configs of ``topics`` (defaults included), by topic; topics the broker
    does not describe are left out."""
    names = sorted(set(topics))
    if not names:
        return {}
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, _message, _kind, name, entries in response.resources:
            if error_code == 0:
                out[name] = {entry[0]: entry[1] for entry in entries}
    return out


class RecordLimits:
    """The largest value each topic takes, and the bytes a record batch may hold for it."""

    def __init__(
        self, limits: dict[str, int] | None = None, *, default: int = BROKER_DEFAULT, bootstrap: str | None = None,
        **options: Any,
    ) -> None:  # fmt: skip
        #: Topic -> its ``max.message.bytes`` as the broker said (or lowered by a refusal).
        self.topics: dict[str, int] = dict(limits or {})
        self.default = default
        #: Where to read the limits again after a refusal (None: only lower them).
        self.bootstrap = bootstrap
        #: Topic -> a smaller cap on a batch's bytes, after the broker refused a batch whose
        #: records each fit (what the framing of many records adds was more than allowed for).
        self.batch_caps: dict[str, int] = {}
        self.options = options

    def topic_bytes(self, topic: str) -> int:
        return min(self.topics.get(topic, self.default), PRODUCER_MAX_REQUEST)

    def max_value(self, topic: str, key: bytes | None = None) -> int:
        """The largest value that fits one record of ``topic`` with ``key``."""
        return self.topic_bytes(topic) - FRAMING - len(key or b"")

    def fits(self, topic: str, key: bytes | None, value: bytes) -> bool:
        return len(value) <= self.max_value(topic, key)

    def batch_bytes(self, topic: str, ceiling: int) -> int:
        """Bytes of records one batch for ``topic`` may hold (``ceiling``: the writer's own cap)."""
        return min(ceiling, self.topic_bytes(topic) - FRAMING, self.batch_caps.get(topic, ceiling))

    def learn(self, configs: dict[str, dict[str, str]]) -> None:
        for topic, config in configs.items():
            value = config.get("max.message.bytes")
            if value is not None and value.isdigit():
                self.topics[topic] = int(value)

    def refused(self, topic: str, largest: int) -> None:
        """The broker refused a write to ``topic`` whose largest record held ``largest`` bytes
        (key and value). When that record alone fits the topic's limit, the batch was too
        large: batches of the topic get half the room. Otherwise the topic's limit goes below
        that record."""
        if largest <= self.max_value(topic):
            cap = max(FRAMING, min(self.batch_caps.get(topic, BATCH_CEILING), self.topic_bytes(topic)) // 2)
            self.batch_caps[topic] = cap
            log.warning("%s: the broker refused a batch of records that each fit; batches hold at most %d bytes "
                        "from now on", topic, cap)  # fmt: skip
            return
        lowered = min(self.topics.get(topic, self.default), largest + FRAMING - 1)
        if lowered < self.topics.get(topic, self.default):
            log.warning("%s: the broker refused a record of %d bytes; records over %d bytes are written as "
                        "dead letters of their own from now on", topic, largest, lowered - FRAMING)  # fmt: skip
        self.topics[topic] = lowered

    async def refresh(self, topics: Iterable[str]) -> None:
        """Read the topics' limits from the broker again."""
        if self.bootstrap is None:
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.options)
        try:
            await admin.start()
            self.learn(await topic_configs(admin, topics))
        finally:
            await admin.close()

    async def after_refusal(self, exc: SizeRefused) -> None:
        """A write was refused for its size: the topic's limit as the broker says now, and in
        any case below the refused record (the broker may cap it elsewhere)."""
        try:
            await self.refresh([exc.topic])
        except Exception as error:  # noqa: BLE001 - lowering below the refused record is enough to progress
            log.info("%s: could not read the topic's limit again: %s", exc.topic, error)
        self.refused(exc.topic, exc.largest)
