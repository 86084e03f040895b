"""``batchstream demo``: the sample pipeline on a local Kafka broker and the emulator.

``--mode batch`` windows every ticket into batches; ``--mode flex`` serves each ticket with
a flex call (the emulator refuses 10% of them with 429, so some fall back to a batch);
``--mode auto`` gives the urgent tickets a deadline 15 s away (as a Kafka header), which
only flex can meet, and sends the rest batch, with batches hedged at 20 s.

``--provider anthropic`` runs the same pipeline on Anthropic's Message Batches (the
emulator speaks it too); Anthropic has no flex tier, so there ``flex`` and ``auto`` serve
their urgent tickets with standard calls (``flex.fallback: standard``). ``--provider gemini``
runs it on Gemini's Batch Mode and flex inference, through the google-genai SDK.

Starts both, runs a worker subprocess (exactly as ``batchstream worker -c``), produces the
bundled support tickets plus a few malformed events, follows the output and dead-letter
topics live, and prints a summary. Exits 0 only when every event got exactly its fate.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from sinks.publisher import Publisher
from sinks.topics import TopicAdmin, TopicSpec
from streams.topics import TopicMissingError, TopicReader

#: The demo's model per provider (its prices are the kinds' list prices: ``providers/<kind>/__init__.py``).
MODELS = {"openai": "gpt-5-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
#: How far ahead an urgent ticket's deadline is in ``--mode auto``.
URGENT_DEADLINE = 15.0

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "category": {"enum": ["billing", "bug", "account", "how_to", "feature_request"]},
        "urgency": {"enum": ["low", "normal", "high"]},
        "sentiment": {"enum": ["negative", "neutral", "positive"]},
        "product": {"type": "string", "maxLength": 40},
        "needs_human": {"type": "boolean"},
    },
    "required": ["category", "urgency", "sentiment", "product", "needs_human"],
    "additionalProperties": False,
}

MALFORMED: list[bytes] = [b"{not json", b"\xff\xfe\x00binary", b"[1, 2, 3]", b'{"id": "no-fields"}', b"42"]


def load_tickets(limit: int) -> list[dict[str, Any]]:
    text = resources.files("demo").joinpath("data/tickets.jsonl").read_bytes()
    tickets = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    while len(tickets) < limit:  # more than bundled: repeat with new ids
        tickets += [{**t, "id": f"{t['id']}-{len(tickets)}"} for t in tickets[: limit - len(tickets)]]
    return tickets[:limit]


def demo_faults(mode: str) -> dict[str, Any]:
    faults: dict[str, Any] = {"batch_seconds": 3.0, "item_error_rate": 0.02}
    if mode != "batch":
        faults.update(flex_429_rate=0.1, flex_latency=0.2)
    return faults


def demo_pipeline_mode(mode: str, provider: str = "openai") -> dict[str, Any]:
    flex = {"concurrency": 32, "attempts": 3, "budget": "10s", "backoff_initial": "200ms", "backoff_max": "2s"}
    if mode == "flex":
        # without a flex tier (Anthropic), flex events are served by standard calls
        return {"mode": "flex", "flex": {**flex, "fallback": "standard" if provider == "anthropic" else "batch"}}
    if mode == "auto":
        return {"mode": "auto", "max_batch_latency": "20s", "flex": {**flex, "fallback": "standard"}}
    return {"mode": "batch"}


def demo_provider(provider: str, root_url: str) -> dict[str, Any]:
    if provider == "anthropic":
        return {"kind": "anthropic", "base_url": root_url, "api_key": "${ANTHROPIC_API_KEY:-sk-ant-local-emulator}",
                "poll_interval": "500ms"}  # fmt: skip
    if provider == "gemini":
        return {"kind": "gemini", "base_url": root_url, "api_key": "${GEMINI_API_KEY:-local-emulator}",
                "poll_interval": "500ms"}  # fmt: skip
    return {"base_url": f"{root_url}/v1", "api_key": "${OPENAI_API_KEY:-sk-local-emulator}", "poll_interval": "500ms"}


def demo_config(
    bootstrap: str, root_url: str, group: str, mode: str = "batch", provider: str = "openai",
    guarantee: str = "at_least_once",
) -> dict[str, Any]:  # fmt: skip
    return {
        "processing_guarantee": guarantee,
        "kafka": {"bootstrap_servers": bootstrap, "group_id": group, "commit_interval": 1},
        "provider": demo_provider(provider, root_url),
        "pipelines": [
            {
                "name": "tickets",
                "input_topic": "tickets",
                "output_topic": "tickets.results",
                "dead_letter_topic": "tickets.dlq",
                **demo_pipeline_mode(mode, provider),
                "model": MODELS[provider],
                "window": {"max_requests": 250, "max_bytes": "10MB", "max_wait": "2s"},
                "retry": {"attempts": 3, "backoff_initial": "200ms", "backoff_max": "2s"},
                "template": {
                    "system": "Classify the support ticket and extract its fields as JSON.",
                    "user": "Subject: {subject}\n\n{body}",
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "ticket", "strict": True, "schema": SCHEMA},
                    },
                    "parameters": {"temperature": 0},
                },
            }
        ],
    }


class Progress:
    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.results: dict[str, dict[str, Any]] = {}
        self.dead: dict[str, dict[str, Any]] = {}
        self.duplicates = 0
        #: (id, status, requests done, requests) of each batch at the provider.
        self.batches: list[tuple[str, str, int, int]] = []
        self.produced = 0

    def record(self, topic: str, value: dict[str, Any]) -> None:
        target = self.results if topic.endswith("results") else self.dead
        if value["id"] in self.results or value["id"] in self.dead:
            self.duplicates += 1
        target[value["id"]] = value

    @property
    def done(self) -> bool:
        return self.expected <= (self.results.keys() | self.dead.keys())

    def table(self, elapsed: float) -> Table:
        table = Table(title=f"batchstream demo - {elapsed:5.1f}s", show_header=False)
        table.add_row("events produced", str(self.produced))
        table.add_row("results", f"[green]{len(self.results)}")
        table.add_row("dead letters", f"[red]{len(self.dead)}")
        active = [b for b in self.batches if b[1] not in ("completed", "failed", "expired", "cancelled", "ended")]
        table.add_row("batches in flight", str(len(active)))
        for batch_id, status, done, total in active[:6]:
            table.add_row(f"  {batch_id}", f"{status} {done}/{total}")
        return table


def _batches(emulator: Any) -> list[tuple[str, str, int, int]]:
    """The emulator's batches of either API, as (id, status, requests done, requests)."""
    emu = emulator.emulator
    rows = [(b.id, b.status, b.completed + b.failed, len(b.lines)) for b in list(emu.batches.values())]
    rows += [(b.id, b.status, sum(b.counts.values()), len(b.requests)) for b in list(emu.message_batches.values())]
    rows += [(b.id, b.state.removeprefix("BATCH_STATE_").lower(), len(b.results), len(b.requests))
             for b in list(emu.gemini_batches.values())]  # fmt: skip
    return rows


def run_demo(
    *, events: int = 2000, mode: str = "batch", provider: str = "openai", guarantee: str = "at_least_once",
    timeout: float = 600,
) -> int:  # fmt: skip
    from devkafka import KafkaBroker
    from emulator import EmulatorThread, Faults

    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="batchstream-demo-"))
    console.print("[bold]batchstream demo[/]: starting a local Kafka broker and the provider emulator...")
    broker = KafkaBroker()
    emulator = EmulatorThread(Faults(**demo_faults(mode)))
    worker: subprocess.Popen[bytes] | None = None
    try:
        bootstrap = broker.start()
        emulator.start()
        console.print(f"kafka {bootstrap}   emulator {emulator.root_url}   provider {provider}   mode {mode}   "
                      f"{guarantee}   logs {workdir}")  # fmt: skip
        asyncio.run(_create_topic(bootstrap))
        config = workdir / "demo.yaml"
        config.write_text(yaml.safe_dump(demo_config(bootstrap, emulator.root_url, "batchstream-demo", mode, provider,
                                                     guarantee)))  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with (workdir / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "agents.cli", "worker", "-c", str(config)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        if not _wait_ready(worker, workdir / "worker.log", console):
            return 1
        tickets = load_tickets(events)
        progress = Progress({t["id"] for t in tickets})
        started = time.monotonic()
        ok = asyncio.run(_follow(bootstrap, emulator, tickets, progress, console, started, timeout, worker, mode))
        elapsed = time.monotonic() - started
        _summary(console, progress, elapsed, len(tickets), MODELS[provider], emulator.emulator.stats["batches_created"])
        if not ok:
            console.print(f"[red]not every event got its fate within {timeout:.0f}s; see {workdir}/worker.log")
            return 1
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        emulator.stop()
        broker.stop()


def _wait_ready(worker: subprocess.Popen[bytes], log: Path, console: Console, timeout: float = 120) -> bool:
    """Produce only once the worker owns its partitions, so latencies exclude its start-up."""
    deadline = time.monotonic() + timeout
    with console.status("starting the worker..."):
        while "loaded state of partitions" not in log.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                console.print(f"[red]the worker did not start; see {log}")
                return False
            time.sleep(0.2)
    return True


async def _create_topic(bootstrap: str) -> None:
    async with TopicAdmin(bootstrap, {}) as admin:
        await admin.create([TopicSpec("tickets", 3, 1)])


async def _follow(
    bootstrap: str, emulator: Any, tickets: list[dict[str, Any]], progress: Progress, console: Console,
    started: float, timeout: float, worker: subprocess.Popen[bytes], mode: str,
) -> bool:  # fmt: skip
    async with Publisher(bootstrap, {}) as producer:
        sent = []
        for ticket in tickets:
            headers = []
            if mode == "auto" and "urgent" in ticket["body"]:
                headers.append(("deadline", str(time.time() + URGENT_DEADLINE).encode()))
            sent.append(await producer.send("tickets", orjson.dumps(ticket), key=ticket["customer"].encode(),
                                            headers=headers))  # fmt: skip
        for raw in MALFORMED:
            sent.append(await producer.send("tickets", raw, key=b"malformed"))
        await asyncio.gather(*sent)
    progress.produced = len(tickets) + len(MALFORMED)
    expected_dead = len(MALFORMED)
    # As every downstream consumer should: records of aborted transactions (exactly_once) are never seen.
    async with TopicReader(bootstrap, {}) as consumer:
        positions: dict[str, dict[int, int]] = {"tickets.results": {}, "tickets.dlq": {}}
        with Live(progress.table(0), console=console, refresh_per_second=4) as live:
            while time.monotonic() - started < timeout:
                if worker.poll() is not None:
                    console.print(f"[red]the worker exited with code {worker.returncode}")
                    return False
                try:
                    for topic, seen in positions.items():
                        for record in await consumer.read_new(topic, seen):
                            progress.record(topic, orjson.loads(record.value or b"{}"))
                except TopicMissingError:  # the worker creates them as it starts
                    await asyncio.sleep(0.2)
                    continue
                progress.batches = _batches(emulator)
                live.update(progress.table(time.monotonic() - started))
                malformed_dead = sum(1 for d in progress.dead.values() if d["id"] not in progress.expected)
                if progress.done and malformed_dead >= expected_dead:
                    return True
                await asyncio.sleep(0.25)
        return False


def _summary(
    console: Console, progress: Progress, elapsed: float, tickets: int, model: str, batches: int
) -> None:  # fmt: skip
    results = list(progress.results.values())
    prompt = sum(r["tokens"]["input"] for r in results if r.get("tokens"))
    completion = sum(r["tokens"]["output"] for r in results if r.get("tokens"))
    # Each result's cost, as the worker priced it (streams/pricing.py, with the kinds' list prices).
    realtime = sum(float(r["cost"]["realtime"]) for r in results if r.get("cost"))
    paid = sum(float(r["cost"]["paid"]) for r in results if r.get("cost"))
    served: dict[str, int] = {}
    latencies: dict[str, list[float]] = {}
    for r in results:
        served[f"{r['mode']}/{r['service_tier']}"] = served.get(f"{r['mode']}/{r['service_tier']}", 0) + 1
        stamps = r["timestamps"]
        if stamps.get("received") and stamps.get("completed"):
            latencies.setdefault(r["mode"], []).append(max(0.0, stamps["completed"] - stamps["received"]))
    missing = progress.expected - (progress.results.keys() | progress.dead.keys())
    reasons: dict[str, int] = {}
    for letter in progress.dead.values():
        reasons[letter["reason"]] = reasons.get(letter["reason"], 0) + 1
    table = Table(title="summary", show_header=False)
    table.add_row("tickets sent (+ malformed)", f"{tickets} (+{len(MALFORMED)})")
    table.add_row("results", str(len(progress.results)))
    table.add_row("dead letters", f"{len(progress.dead)} {reasons}")
    table.add_row("missing", str(len(missing)))
    table.add_row("duplicates", str(progress.duplicates))
    table.add_row("served by (path/tier)", " ".join(f"{k}={v}" for k, v in sorted(served.items())))
    for path, values in sorted(latencies.items()):
        values.sort()
        p50, p95 = values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.95))]
        table.add_row(f"latency {path} (p50 / p95)", f"{p50:.1f}s / {p95:.1f}s")
    table.add_row("batches", str(batches))
    table.add_row("elapsed", f"{elapsed:.1f}s")
    table.add_row("tokens (input / output)", f"{prompt} / {completion}")
    console.print()
    table.add_row("cost: paid vs all real-time", f"${paid:.4f} vs ${realtime:.4f} ({model} list prices)")
    console.print(table)
    for result in list(progress.results.values())[:3]:
        console.print(f"  {result['id']}: {orjson.dumps(result['output']).decode()}", soft_wrap=True)
