"""The sample job behind ``batchstream demo``: local Kafka, the emulator, 2,000 support tickets.

Not a production agent: it starts a broker and an emulator of its own, runs a worker over the
sample tickets, and prints what came out.
"""

from demo.run import run_demo

__all__ = ["run_demo"]
