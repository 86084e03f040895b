"""The topics written to: their creation and the checks made on them.

:class:`TopicAdmin` is the project's one admin client (``async with``): which topics exist and
with how many partitions, creating the missing ones, their effective configs (``sinks/limits.py``
reads ``max.message.bytes`` from them), and whether the cluster answers (``/readyz``). The
worker's start-up, ``batchstream webhooks`` and ``backfill`` create their topics through it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from sinks.limits import topic_configs
from streams.topics import start

__all__ = ["TopicAdmin", "TopicSpec", "is_unreachable", "topics_refused"]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create when missing."""

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


def is_unreachable(exc: BaseException) -> bool:
    """Whether a broker error means "not reachable now, try again" (a connection refused, a
    retriable error such as a broker still registering), not a refusal to act on."""
    return isinstance(exc, errors.KafkaConnectionError) or bool(getattr(exc, "retriable", False))


def topics_refused(response: Any) -> str:
    """What a CreateTopics response refused, as ``topic: Error: message; ...`` ("" when nothing):
    aiokafka's ``create_topics`` returns the per-topic errors without raising them. A topic
    another worker created meanwhile is not refused."""
    refused = []
    for entry in getattr(response, "topic_errors", ()):
        name, code, message = entry[0], entry[1], entry[2] if len(entry) > 2 else None
        if code and errors.for_code(code) is not errors.TopicAlreadyExistsError:
            refused.append(f"{name}: {errors.for_code(code).__name__}: {message or ''}".rstrip(": "))
    return "; ".join(refused)


class TopicAdmin:
    """An admin client; ``async with`` (one that failed to start is closed before the error goes on)."""

    def __init__(self, bootstrap: str, options: dict[str, Any], *, request_timeout: float | None = None) -> None:
        timeout = {} if request_timeout is None else {"request_timeout_ms": int(request_timeout * 1000)}
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **timeout, **options)

    async def start(self) -> None:
        await start(self._admin)

    async def close(self) -> None:
        await self._admin.close()

    async def __aenter__(self) -> TopicAdmin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def partition_counts(self) -> dict[str, int]:
        """Every topic the cluster has, with its partition count."""
        names = await self._admin.list_topics()
        if not names:
            return {}
        described = await self._admin.describe_topics(list(names))
        return {t["topic"]: len(t["partitions"]) for t in described if not t.get("error_code")}

    async def create(self, specs: Iterable[TopicSpec]) -> str:
        """Create these topics; what the broker refused (:func:`topics_refused`, "" when nothing)."""
        wanted = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                           topic_configs=dict(s.configs)) for s in specs]  # fmt: skip
        if not wanted:
            return ""
        return topics_refused(await self._admin.create_topics(wanted))

    async def ensure(self, specs: Iterable[TopicSpec]) -> str:
        """Create those of these topics that do not exist; what the broker refused ("" when nothing)."""
        existing = set(await self._admin.list_topics())
        return await self.create(s for s in specs if s.name not in existing)

    async def configs(self, topics: Iterable[str]) -> dict[str, dict[str, str]]:
        """The effective configs of ``topics`` by topic (``sinks.limits.topic_configs``)."""
        return await topic_configs(self._admin, topics)

    async def describe_cluster(self) -> int:
        """How many brokers the cluster has (0 while it has none, e.g. no controller yet); raises
        unless it answers."""
        return len((await self._admin.describe_cluster()).get("brokers") or ())
