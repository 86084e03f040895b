"""What flows out: results and dead letters, each a sink to a Kafka topic."""

from sinks.base import MemorySink, Sink, TopicSink

__all__ = ["MemorySink", "Sink", "TopicSink"]
