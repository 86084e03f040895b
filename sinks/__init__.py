"""What flows out: results and dead letters, each a sink to a Kafka topic, and window records,
through one writer per guarantee (``Writer``), topics created and checked (``sinks/topics.py``)."""

from sinks.base import KafkaWriter, MemorySink, Outgoing, Sink, TopicSink, Writer

__all__ = ["KafkaWriter", "MemorySink", "Outgoing", "Sink", "TopicSink", "Writer"]
