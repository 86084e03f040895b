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
        if args.command == "demo":
            from demo import run_demo

            return run_demo(events=args.events, mode=args.mode, provider=args.provider)
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
