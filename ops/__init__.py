"""Operator commands: they read (and, for a replay, write) Kafka and the providers from outside
a worker, and need none running. ``dlq`` inspects and replays dead letters."""
