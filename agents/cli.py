"""The ``batchstream`` command line."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from streams.errors import BatchstreamError, ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batchstream", description="Kafka to LLM batch APIs, losing nothing.")
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run the pipelines of a configuration file")
    worker.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])

    emulator = sub.add_parser(
        "emulator", help="run the provider emulator (OpenAI, Azure OpenAI, Anthropic and Gemini APIs)"
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8089)
    emulator.add_argument("--batch-seconds", type=float, default=1.0, help="processing time of a batch")
    emulator.add_argument("--item-error-rate", type=float, default=0.0, help="share of batch requests that fail")
    emulator.add_argument("--flex-429-rate", type=float, default=0.0, help="share of flex calls refused with 429")
    emulator.add_argument("--flex-latency", type=float, default=0.0, help="seconds a flex call takes")

    demo = sub.add_parser("demo", help="run the sample pipeline on a local Kafka and the emulator")
    demo.add_argument("--events", type=int, default=2000, help="how many tickets to send")
    demo.add_argument("--mode", choices=["batch", "flex", "auto"], default="batch", help="the pipeline's mode")
    demo.add_argument(
        "--provider", choices=["openai", "anthropic", "gemini"], default="openai", help="the API the emulator plays"
    )
    demo.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default="at_least_once",
                      help="the worker's processing_guarantee")  # fmt: skip

    status = sub.add_parser("status", help="each pipeline at a glance: lag, batches in flight, fates, cost")
    status.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")
    status.add_argument("--pipeline", action="append", default=[], help="only this pipeline (repeat)")
    status.add_argument("--json", action="store_true", help="print one JSON document (pipelines by name)")
    status.add_argument("--watch", action="store_true", help="a live view, refreshed until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")

    fill = sub.add_parser("backfill", help="run a pipeline's task over a bounded input to completion")
    fill.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")
    fill.add_argument("--pipeline", required=True, help="the pipeline whose task runs")
    fill.add_argument("--task-version", required=True, help="the task_version stamped on the results")
    source = fill.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="a JSONL file of events, one per line")
    source.add_argument("--topic", help="a topic whose records (or a range of them) are the events")
    fill.add_argument("--since", help="--topic: records from this time (ISO 8601 with a zone, or epoch seconds)")
    fill.add_argument("--until", help="--topic: records until this time")
    fill.add_argument("--offsets", help="--topic: partition:first-last[,...] (inclusive)")
    fill.add_argument("--output", required=True, help="topic for the results (dead letters: OUTPUT.dlq)")
    fill.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")

    hooks = sub.add_parser("webhooks", help="receive completion webhooks, verify them, publish the batch ids")
    hooks.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")
    hooks.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 behind a load balancer)")
    hooks.add_argument("--port", type=int, default=8090)

    dlq = sub.add_parser("dlq", help="inspect and replay a pipeline's dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    inspect = dlq_sub.add_parser("inspect", help="dead letters by reason: count, first and last seen, a sample")
    replay = dlq_sub.add_parser("replay", help="re-publish the original events of dead letters to the input topic")
    for command in (inspect, replay):
        command.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")
        command.add_argument("--pipeline", required=True, help="the pipeline's name")
    replay.add_argument("--reason", action="append", default=[], help="only dead letters of this reason (repeat)")
    replay.add_argument("--since", help="only dead letters written since (ISO 8601 with a zone, or epoch seconds)")
    replay.add_argument("--until", help="only dead letters written until (ISO 8601 with a zone, or epoch seconds)")
    replay.add_argument("--id", action="append", default=[], dest="ids", help="only this event id (repeat)")
    replay.add_argument("--to", help="publish to this topic instead of the pipeline's input topic")
    replay.add_argument("--max-replays", type=int, default=3, help="skip events already replayed this often")
    replay.add_argument("--dry-run", action="store_true", help="print what would be replayed; publish nothing")

    dev = sub.add_parser("dev", help="development helpers")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    kafka = dev_sub.add_parser("kafka", help="run a local single-node Kafka broker in the foreground")
    kafka.add_argument("--port", type=int, default=None, help="broker port (default: a free one)")
    kafka.add_argument("--data-dir", type=Path, default=None, help="keep data here across restarts")

    args = parser.parse_args(argv)
    try:
        if args.command == "worker":
            return _worker(args.config, args.loglevel)
        if args.command == "emulator":
            from pydantic import ValidationError

            from emulator import Faults, serve
            from streams.config import format_validation_error

            try:
                faults = Faults(
                    batch_seconds=args.batch_seconds, item_error_rate=args.item_error_rate,
                    flex_429_rate=args.flex_429_rate, flex_latency=args.flex_latency,
                )  # fmt: skip
            except ValidationError as exc:
                message = format_validation_error("emulator options", exc).replace("_", "-")
                raise ConfigError(message) from None
            serve(args.host, args.port, faults)
            return 0
        if args.command in ("status", "dlq", "backfill", "webhooks"):
            from ops import commands

            return int(getattr(commands, args.command)(args))
        if args.command == "demo":
            from demo import run_demo

            return run_demo(events=args.events, mode=args.mode, provider=args.provider, guarantee=args.guarantee)
        return _dev_kafka(args.port, args.data_dir)
    except BatchstreamError as exc:
        print(f"batchstream: {exc}", file=sys.stderr)  # noqa: T201
        return 2


def _worker(config: Path, loglevel: str) -> int:
    from agents.worker import run
    from streams.config import load_settings

    settings = load_settings(config)
    run(settings, loglevel=loglevel)
    return 0


def _dev_kafka(port: int | None, data_dir: Path | None) -> int:
    from devkafka import KafkaBroker, ToolMissingError

    broker = KafkaBroker(port=port, data_dir=data_dir)
    try:
        bootstrap = broker.start()
    except ToolMissingError as exc:
        print(f"batchstream: {exc}", file=sys.stderr)  # noqa: T201
        return 3

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"bootstrap={bootstrap}", flush=True)  # noqa: T201 - the command's contract
    print(f"log={broker.log_path}", file=sys.stderr, flush=True)  # noqa: T201
    try:
        code = broker.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        broker.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
