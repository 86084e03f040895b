"""The ``batchstream`` command line."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from streams.errors import BatchstreamError, ConfigError, Unreachable, UsageError

#: Exit codes (docs/operations.md): the run failed (a service unreachable, records refused or
#: missing); the command line is wrong; the configuration is (or what it names on the cluster).
EXIT_RUNTIME, EXIT_USAGE, EXIT_CONFIG, EXIT_INTERRUPTED = 1, 2, 3, 130


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default (where it has one worth showing)."""


def _duration(value: str) -> float:
    from streams.units import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_duration(value: str) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be more than 0")
    return seconds


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be 0 or more")
    return n


def _port(value: str) -> int:
    n = _count(value)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: a port is at most 65535")
    return n


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchstream")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="batchstream", description="Kafka to LLM batch APIs, losing nothing.",
                                  epilog="exit codes: 0 done, 1 the run failed, 2 usage, 3 configuration",
                                  formatter_class=_Help)  # fmt: skip
    top.add_argument("--version", action="version", version=f"batchstream {_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, help: str) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help, description=help, formatter_class=_Help)  # type: ignore[no-any-return]

    def config(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("-c", "--config", required=True, type=Path, help="YAML configuration file")

    worker = command(sub, "worker", "run the pipelines of a configuration file")
    config(worker)
    levels = ["debug", "info", "warning", "error"]
    worker.add_argument("--log-level", default="info", choices=levels, help="least severe log level printed")
    worker.add_argument("--loglevel", choices=levels, dest="log_level", help=argparse.SUPPRESS)  # the older name

    emulator = command(sub, "emulator", "run the provider emulator (OpenAI, Azure OpenAI, Anthropic and Gemini APIs)")
    emulator.add_argument("--host", default="127.0.0.1", help="address to bind")
    emulator.add_argument("--port", type=_port, default=8089, help="port to bind")
    emulator.add_argument("--batch-seconds", type=float, default=1.0, help="processing time of a batch")
    emulator.add_argument("--item-error-rate", type=float, default=0.0, help="share of batch requests that fail")
    emulator.add_argument("--flex-429-rate", type=float, default=0.0, help="share of flex calls refused with 429")
    emulator.add_argument("--flex-latency", type=float, default=0.0, help="seconds a flex call takes")

    demo = command(sub, "demo", "run the sample pipeline on a local Kafka and the emulator")
    demo.add_argument("--events", type=_count, default=2000, help="how many tickets to send")
    demo.add_argument("--mode", choices=["batch", "flex", "auto"], default="batch", help="the pipeline's mode")
    demo.add_argument("--provider", choices=["openai", "anthropic", "gemini"], default="openai",
                      help="the API the emulator plays")  # fmt: skip
    demo.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default="at_least_once",
                      help="the worker's processing_guarantee")  # fmt: skip

    status = command(sub, "status", "each pipeline at a glance: lag, batches in flight, fates, cost")
    config(status)
    status.add_argument("--pipeline", action="append", default=[], help="only this pipeline (repeat; default: all)")
    status.add_argument("--json", action="store_true", help="print one JSON document (pipelines by name)")
    status.add_argument("--watch", action="store_true", help="a live view, refreshed until Ctrl-C")
    status.add_argument("--interval", type=_positive_duration, default="2s",
                        help="time between refreshes with --watch (250ms, 2s, 1m)")  # fmt: skip

    fill = command(sub, "backfill", "run a pipeline's task over a bounded input to completion")
    config(fill)
    fill.add_argument("--pipeline", required=True, help="the pipeline whose task runs")
    fill.add_argument("--task-version", required=True, help="the task_version stamped on the results")
    source = fill.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="a JSONL file of events, one per line")
    source.add_argument("--topic", help="a topic whose records (or a range of them) are the events")
    fill.add_argument("--since", help="--topic: records from this time (ISO 8601 with a zone, or epoch seconds)")
    fill.add_argument("--until", help="--topic: records until this time")
    fill.add_argument("--offsets", help="--topic: partition:first-last[,...] (inclusive)")
    fill.add_argument("--to", required=True, metavar="TOPIC", help="topic for the results (dead letters: TOPIC.dlq)")
    fill.add_argument("--output", dest="to", help=argparse.SUPPRESS)  # the older name
    fill.add_argument("--timeout", type=_positive_duration, default=None,
                      help="give up after this long (10m, 2h; default: never)")  # fmt: skip

    hooks = command(sub, "webhooks", "receive completion webhooks, verify them, publish the batch ids")
    config(hooks)
    hooks.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 behind a load balancer)")
    hooks.add_argument("--port", type=_port, default=8090, help="port to bind")

    dlq = command(sub, "dlq", "inspect and replay a pipeline's dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    inspect = command(dlq_sub, "inspect", "dead letters by reason: count, first and last seen, a sample")
    replay = command(dlq_sub, "replay", "re-publish the original events of dead letters to the input topic")
    for cmd in (inspect, replay):
        config(cmd)
        cmd.add_argument("--pipeline", required=True, help="the pipeline's name")
    replay.add_argument("--reason", action="append", default=[], help="only dead letters of this reason (repeat)")
    replay.add_argument("--since", help="only dead letters written since (ISO 8601 with a zone, or epoch seconds)")
    replay.add_argument("--until", help="only dead letters written until (ISO 8601 with a zone, or epoch seconds)")
    replay.add_argument("--id", action="append", default=[], dest="ids", help="only this event id (repeat)")
    replay.add_argument("--to", metavar="TOPIC", help="publish to this topic (default: the pipeline's input topic)")
    replay.add_argument("--max-replays", type=_count, default=3, help="skip events already replayed this often")
    replay.add_argument("--dry-run", action="store_true", help="print what would be replayed; publish nothing")

    dev = command(sub, "dev", "development helpers")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="COMMAND")
    kafka = command(dev_sub, "kafka", "run a local single-node Kafka broker in the foreground")
    kafka.add_argument("--port", type=_port, default=None, help="broker port (default: a free one)")
    kafka.add_argument("--data-dir", type=Path, default=None, help="keep data here across restarts (default: none)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BatchstreamError as exc:
        print(f"batchstream: {exc}", file=sys.stderr)  # noqa: T201
        if isinstance(exc, UsageError):
            return EXIT_USAGE
        return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_RUNTIME


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "worker":
        return _worker(args.config, args.log_level)
    if args.command == "emulator":
        return _emulator(args)
    if args.command in ("status", "dlq", "backfill", "webhooks"):
        from ops import commands

        return int(getattr(commands, args.command)(args))
    if args.command == "demo":
        from demo import run_demo

        return run_demo(events=args.events, mode=args.mode, provider=args.provider, guarantee=args.guarantee)
    return _dev_kafka(args.port, args.data_dir)


def _emulator(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from emulator import Faults, serve
    from streams.loading import format_validation_error

    try:
        faults = Faults(
            batch_seconds=args.batch_seconds, item_error_rate=args.item_error_rate,
            flex_429_rate=args.flex_429_rate, flex_latency=args.flex_latency,
        )  # fmt: skip
    except ValidationError as exc:
        raise UsageError(format_validation_error("emulator options", exc).replace("_", "-")) from None
    try:
        serve(args.host, args.port, faults)
    except OSError as exc:
        raise Unreachable(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


def _worker(config: Path, log_level: str) -> int:
    from agents.worker import run
    from providers import load_settings

    settings = load_settings(config)
    run(settings, loglevel=log_level)
    return 0


def _dev_kafka(port: int | None, data_dir: Path | None) -> int:
    import logging

    from devkafka import KafkaBroker, ToolMissingError
    from devkafka.broker import BrokerStartError

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # readiness probes of a starting broker fail by design
    broker = KafkaBroker(port=port, data_dir=data_dir)
    try:
        bootstrap = broker.start()
    except ToolMissingError as exc:
        raise ConfigError(str(exc)) from None
    except BrokerStartError as exc:
        broker.stop()
        first, *rest = str(exc).splitlines() or [""]
        # the log's first line that says why: a port taken, else the first error
        causes = [line.strip() for line in rest if "Address already in use" in line or "failed to bind" in line]
        causes += [line.strip() for line in rest if " ERROR " in line]
        cause = f": {causes[0][:300]}" if causes else ""
        raise Unreachable(f"dev kafka: {first.rstrip(':')}{cause}") from None

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
