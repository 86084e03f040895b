"""``python -m demo.produce``: the demo's support tickets to a topic, keyed by customer.

The compose stack's sample producer (``docker compose --profile demo up``); also handy
against any broker: ``python -m demo.produce --bootstrap 127.0.0.1:9092 --events 500``.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import orjson

from demo.run import load_tickets
from sinks.publisher import Publisher


async def produce(bootstrap: str, topic: str, events: int) -> int:
    tickets = load_tickets(events)
    async with Publisher(bootstrap, {}) as producer:
        sent = [await producer.send(topic, orjson.dumps(ticket), key=str(ticket["customer"]).encode())
                for ticket in tickets]  # fmt: skip
        await asyncio.gather(*sent)  # every ticket acknowledged, or the first refusal raised
    return len(tickets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.produce", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--topic", default="tickets")
    parser.add_argument("--events", type=int, default=200, help="how many tickets")
    args = parser.parse_args(argv)
    count = asyncio.run(produce(args.bootstrap, args.topic, args.events))
    print(f"produced {count} tickets to {args.topic} at {args.bootstrap}")  # noqa: T201 - the command's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
