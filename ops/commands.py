"""The operator commands behind ``batchstream status | dlq | backfill | webhooks`` (argument
parsing stays in ``agents/cli.py``); each returns the process's exit code."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from streams.errors import ConfigError, Unreachable, UsageError

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T], bootstrap: str) -> T:
    """``asyncio.run(coro)``; Kafka that cannot be reached is :class:`Unreachable` (one line, exit 1)."""
    import asyncio
    import logging

    from streams.topics import BrokerError

    # aiokafka logs each failed connection; the one line below says what failed, once
    quiet, level = logging.getLogger("aiokafka"), logging.getLogger("aiokafka").level
    quiet.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(coro)
    except BrokerError as exc:
        raise Unreachable(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    finally:
        quiet.setLevel(level)


def _pipelines(settings: Any, names: list[str]) -> list[Any]:
    known = {p.name: p for p in settings.pipelines}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--pipeline: no pipeline named {unknown[0]!r} (configured: {', '.join(known)})")
    return [known[n] for n in names] if names else list(settings.pipelines)


def status(args: argparse.Namespace) -> int:
    import asyncio

    import orjson
    from rich.console import Console
    from rich.live import Live

    from ops.status import StatusReader, render
    from providers import load_settings
    from streams.app import kafka_options

    if args.json and args.watch:
        raise UsageError("--json and --watch: choose one (--json prints one document)")
    settings = load_settings(args.config)
    pipelines = _pipelines(settings, args.pipeline)

    async def run() -> None:
        async with StatusReader(settings, pipelines, kafka_options(settings.kafka)) as reader:
            document = await reader.snapshot()
            if args.json:
                sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
                return
            if not args.watch:
                Console().print(render(document))
                return
            with Live(render(document), refresh_per_second=4) as live:
                while True:
                    await asyncio.sleep(args.interval)
                    live.update(render(await reader.snapshot()))

    try:
        _run(run(), settings.kafka.bootstrap_servers)
    except KeyboardInterrupt:
        pass
    return 0


def _moment(option: str, value: str | None) -> int | None:
    from streams.models import parse_deadline

    try:
        return None if value is None else int(parse_deadline(value) * 1000)
    except ValueError as exc:
        raise UsageError(f"--{option}: {exc}") from None


def backfill(args: argparse.Namespace) -> int:
    import signal as signals
    import subprocess

    import yaml
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ops import backfill as filling
    from providers import load_settings
    from streams.app import kafka_options
    from streams.topics import TopicReader

    if args.file is not None and (args.since or args.until or args.offsets):
        raise UsageError("--since, --until and --offsets select records of --topic, not of --file")
    if args.offsets and (args.since or args.until):
        raise UsageError("--offsets: choose offsets or --since/--until, not both")
    if args.file is not None and not args.file.is_file():
        raise UsageError(f"--file: {args.file}: no such file")
    settings = load_settings(args.config)
    [cfg] = _pipelines(settings, [args.pipeline])
    version, options, console = args.task_version, kafka_options(settings.kafka), Console()
    started = time.monotonic()

    async def prepare() -> tuple[str, int]:
        source: filling.Source
        if args.file is not None:
            source = filling.file_source(args.file)
        else:
            async with TopicReader(settings.kafka.bootstrap_servers, options) as reader:
                source = await filling.topic_source(
                    reader, args.topic, since_ms=_moment("since", args.since), until_ms=_moment("until", args.until),
                    offsets=filling.parse_offsets(args.offsets) if args.offsets else None,
                )  # fmt: skip
        topic = f"batchstream.backfill.{cfg.name}.{source.name}"
        return topic, await filling.copy_input(settings, options, topic, source)

    topic, count = _run(prepare(), settings.kafka.bootstrap_servers)
    console.print(f"backfill of {cfg.name} as task version {version!r}: {count} events from {topic} "
                  f"to {args.to}")  # fmt: skip
    raw = yaml.safe_load(args.config.read_text())
    workdir = filling.workdir()
    worker = filling.start_worker(
        filling.worker_config(raw, cfg, topic=topic, output=args.to, version=version), workdir
    )
    columns = (TextColumn("events with their fate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("fates", total=count)

            def moved(done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            fates = _run(filling.follow(
                settings, options, cfg, topic=topic, output=args.to, version=version, worker=worker,
                on_progress=moved, timeout=args.timeout,
            ), settings.kafka.bootstrap_servers)  # fmt: skip
    except ConfigError as exc:
        console.print(f"[red]{exc}; see {workdir / 'worker.log'}")
        return 1
    finally:
        if worker.poll() is None:
            worker.send_signal(signals.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
    from rich.table import Table

    reasons = dict(fates.reasons)  # by first occurrence
    table = Table(title=f"backfill {cfg.name} @ {version}", show_header=False)
    table.add_row("events", str(fates.total))
    table.add_row("results", str(fates.results))
    table.add_row("dead letters", f"{sum(reasons.values())} {reasons if reasons else ''}".strip())
    table.add_row("missing", str(fates.missing))
    table.add_row("cost", f"${fates.paid:.4f} paid vs ${fates.realtime:.4f} at real-time prices")
    table.add_row("duration", f"{time.monotonic() - started:.1f}s")
    console.print(table)
    return 0 if not fates.missing else 1


def webhooks(args: argparse.Namespace) -> int:

    from aiohttp import web

    from ops.webhooks import WebhookReceiver
    from providers import load_settings
    from sinks.topics import TopicAdmin, TopicSpec
    from streams.app import kafka_options

    settings = load_settings(args.config)
    if settings.webhooks is None:
        raise ConfigError("webhooks: required (webhooks: {secret: ${OPENAI_WEBHOOK_SECRET}})")
    hooks, options = settings.webhooks, kafka_options(settings.kafka)

    async def ensure_topic() -> None:
        async with TopicAdmin(settings.kafka.bootstrap_servers, options) as admin:
            await admin.ensure([TopicSpec(hooks.topic, 1, settings.kafka.replication_factor)])

    _run(ensure_topic(), settings.kafka.bootstrap_servers)
    receiver = WebhookReceiver(hooks, settings.kafka.bootstrap_servers, options)
    print(f"listening on http://{args.host}:{args.port}/ (publishing to {hooks.topic})", flush=True)  # noqa: T201
    web.run_app(receiver.app(), host=args.host, port=args.port, print=None)
    return 0


def dlq(args: argparse.Namespace) -> int:

    from rich.console import Console

    from ops import dlq as letters
    from providers import load_settings
    from streams.app import kafka_options

    settings = load_settings(args.config)
    [cfg] = _pipelines(settings, [args.pipeline])
    bootstrap, options, console = settings.kafka.bootstrap_servers, kafka_options(settings.kafka), Console()
    if args.dlq_command == "inspect":
        rows = _run(letters.inspect(bootstrap, options, cfg), bootstrap)
        console.print(letters.inspect_table(cfg, rows))
        return 0

    plan = _run(letters.plan_replay(
        bootstrap, options, cfg, reasons=args.reason, since_ms=_moment("since", args.since),
        until_ms=_moment("until", args.until), ids=args.ids, target=args.to, max_replays=args.max_replays,
    ), bootstrap)  # fmt: skip
    published, refused = 0, list[str]()
    if not args.dry_run:
        published, refused = _run(letters.replay(bootstrap, options, plan), bootstrap)
    console.print(letters.replay_table(plan, dry_run=args.dry_run))
    if plan.skipped_gone:
        console.print(f"skipped {plan.skipped_gone} dead letters without their event (input_gone, or a reference "
                      "to an original too large to carry): their events are no longer in the input topic, so there "
                      "is nothing to replay")  # fmt: skip
    if args.dry_run:
        console.print(f"would replay {len(plan.publish)} events to {plan.target} (dry run: nothing published)")
        return 0
    console.print(f"replayed {published} events to {plan.target}")
    if refused:
        console.print(f"[red]{len(refused)} events were refused by the broker and not replayed[/red] "
                      f"(first: {refused[0]}); run the replay again once the cause is fixed")  # fmt: skip
        return 1
    return 0
