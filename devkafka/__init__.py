"""A real single-node Apache Kafka broker (KRaft) built from Maven Central's jars.

One implementation behind two faces: ``batchstream dev kafka`` for local development and
the pytest fixtures in ``tests/conftest.py``.
"""

from devkafka.broker import KafkaBroker, ToolMissingError

__all__ = ["KafkaBroker", "ToolMissingError"]
