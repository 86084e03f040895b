"""faust's own floor: a bare agent that only consumes and acks, on the worker's app settings.

With faust's own Kafka transport as faust ships it, or with ``batchstream`` as the last
argument the worker's (its consumer delivers a message without faust's per-message wait when
nothing can block it: ``streams/app.py``).

Run by ``bench.backlog`` as a subprocess: ``python -m bench.floor BOOTSTRAP TOPIC N [batchstream]``. It prints
``assigned`` once the group gave it partitions and ``done`` once it has seen N events, each
on its own line, flushed at once; the benchmark times the lines.
"""

from __future__ import annotations

import sys

import faust
from faust.transport.drivers import aiokafka as faust_kafka

from streams.app import create_app
from streams.config import KafkaSettings


def main() -> None:
    bootstrap, topic_name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = create_app(KafkaSettings(bootstrap_servers=bootstrap, group_id=f"floor-{topic_name}", commit_interval=1))
    if sys.argv[4:5] != ["batchstream"]:
        app.transport = faust_kafka.Transport(app.conf.broker_consumer, app)
    topic = app.topic(topic_name)
    seen = 0

    @app.agent(topic)
    async def floor(stream: faust.StreamT[bytes]) -> None:
        nonlocal seen
        async for _ in stream:  # acked as faust acks every event it hands over
            seen += 1
            if seen == n:
                print("done", flush=True)

    @app.on_partitions_assigned.connect
    async def assigned(*_: object, **__: object) -> None:
        print("assigned", flush=True)

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
