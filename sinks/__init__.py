"""What flows out: results and dead letters, each a sink to a Kafka topic."""

from sinks.base import Sink, TopicSink

__all__ = ["Sink", "TopicSink"]
