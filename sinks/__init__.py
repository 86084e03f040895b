"""What flows out: results and dead letters, each a sink to a Kafka topic."""

from sinks.base import KafkaWriter, MemorySink, Sink, TopicSink

__all__ = ["KafkaWriter", "MemorySink", "Sink", "TopicSink"]
