"""Chaos soak: Toxiproxy between the worker and its broker, and between the worker and the
provider; rounds of black-holes, resets, refused connections and latency, SIGKILLs at random
moments (a restart may meet a broker it cannot reach, and waits for it), and a broker restart.
Every event ends with one fate (one only under ``exactly_once``, as a ``read_committed``
consumer sees it) and the group commits every input offset.

The short form (CI) runs ``auto`` mode (both lanes) under ``exactly_once`` with four rounds;
``BATCHSTREAM_SOAK=long`` runs every mode under both guarantees with three seeds and eight
rounds (``BATCHSTREAM_CHAOS_ROUNDS``, ``BATCHSTREAM_CHAOS_EVENTS`` override). Toxiproxy's
server comes from ``scripts/toxiproxy`` (built from the Go module proxy); without it, and
without Go, these tests are skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from devkafka import KafkaBroker
from tests.support import (
    ROOT,
    TopicReader,
    WorkerProcess,
    create_topic,
    end_offsets,
    free_port,
    pipeline,
    produce_placed,
    wait_committed_offsets,
    wait_every_id,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.soak]

LONG = os.environ.get("BATCHSTREAM_SOAK") == "long"
SEEDS = range(3) if LONG else range(1)
ROUNDS = int(os.environ.get("BATCHSTREAM_CHAOS_ROUNDS", 8 if LONG else 4))
EVENTS = int(os.environ.get("BATCHSTREAM_CHAOS_EVENTS", 1500 if LONG else 400))
CASES = (
    [(g, m) for g in ("at_least_once", "exactly_once") for m in ("batch", "flex", "auto")]
    if LONG
    else [("exactly_once", "auto")]
)
#: Faults of one round: (proxy, toxic type, attributes); "disabled" refuses connections.
FAULTS: list[tuple[str, str, dict[str, int]]] = [
    ("kafka", "timeout", {"timeout": 0}),  # a black-hole: bytes vanish, connections hang
    ("kafka", "reset_peer", {"timeout": 500}),  # connections reset
    ("kafka", "latency", {"latency": 2000, "jitter": 1000}),
    ("kafka", "disabled", {}),  # nothing listens: every connection refused
    ("provider", "timeout", {"timeout": 0}),
    ("provider", "reset_peer", {"timeout": 200}),
    ("provider", "latency", {"latency": 2500, "jitter": 500}),
]


def toxiproxy_binary() -> str | None:
    """The Toxiproxy server: ``$TOXIPROXY_SERVER``, or built by ``scripts/toxiproxy`` into ``.tools``."""
    explicit = os.environ.get("TOXIPROXY_SERVER")
    if explicit:
        return explicit
    built = ROOT / ".tools" / "toxiproxy-server"
    if built.exists():
        return str(built)
    if shutil.which("go") is None:
        return None
    proc = subprocess.run([str(ROOT / "scripts" / "toxiproxy")], capture_output=True, text=True, check=False)
    return str(built) if proc.returncode == 0 and built.exists() else None


class Toxiproxy:
    """The Toxiproxy server's HTTP API (https://github.com/Shopify/toxiproxy#http-api)."""

    def __init__(self, binary: str, log: Path) -> None:
        self.port = free_port()
        self._log = log.open("wb")
        self.proc = subprocess.Popen([binary, "-host", "127.0.0.1", "-port", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)  # fmt: skip

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def answers(self) -> bool:
        try:
            self.call("GET", "/proxies")
        except OSError:
            return False
        return True

    def proxy(self, name: str, listen: int, upstream: str) -> None:
        self.call("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{listen}", "upstream": upstream})

    def fault(self, proxy: str, kind: str, attributes: dict[str, int]) -> None:
        if kind == "disabled":
            self.call("POST", f"/proxies/{proxy}", {"enabled": False})
            return
        for stream in ("downstream", "upstream"):
            self.call("POST", f"/proxies/{proxy}/toxics",
                      {"name": f"{kind}-{stream}", "type": kind, "stream": stream, "toxicity": 1.0,
                       "attributes": attributes})  # fmt: skip

    def heal(self) -> None:
        """Every proxy enabled, every toxic removed."""
        self.call("POST", "/reset")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def toxiproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Toxiproxy]:
    binary = toxiproxy_binary()
    if binary is None:
        pytest.skip("no Toxiproxy server: scripts/toxiproxy builds it with Go from the Go module proxy")
    server = Toxiproxy(binary, tmp_path_factory.mktemp("toxiproxy") / "toxiproxy.log")
    try:
        deadline = time.monotonic() + 30
        while not server.answers():
            assert server.proc.poll() is None, "the Toxiproxy server exited"
            assert time.monotonic() < deadline, "the Toxiproxy server did not answer within 30 s"
            time.sleep(0.1)  # polling a server that is starting (not synchronising test steps)
        yield server
    finally:
        server.stop()


class ChaosBroker:
    """A broker of its own whose clients (the worker) reach it only through Toxiproxy; the
    test's own clients use its direct listener, untouched by the faults."""

    def __init__(self, toxiproxy: Toxiproxy, data_dir: Path) -> None:
        self.listen, self.proxied = free_port(), free_port()
        self.broker = KafkaBroker(data_dir=data_dir, external=(self.listen, self.proxied))
        self.direct = self.broker.start()
        toxiproxy.proxy("kafka", self.proxied, f"127.0.0.1:{self.listen}")
        self.bootstrap = f"127.0.0.1:{self.proxied}"

    def restart(self, down: float) -> None:
        self.broker.stop()
        time.sleep(down)  # the broker stays down this long: the scenario, not a synchronisation
        self.broker.start()


@pytest.fixture(scope="module")
def chaos_broker(toxiproxy: Toxiproxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosBroker]:
    broker = ChaosBroker(toxiproxy, tmp_path_factory.mktemp("chaos-kafka"))
    yield broker
    broker.broker.stop()


@pytest.fixture
async def chaos(toxiproxy: Toxiproxy, chaos_broker: ChaosBroker, emulator: Any) -> AsyncIterator[Toxiproxy]:
    """The provider proxy for this test's emulator; every fault healed after the test."""
    toxiproxy.heal()
    if "provider" not in {p for p in toxiproxy.call("GET", "/proxies")}:
        toxiproxy.proxy("provider", free_port(), f"127.0.0.1:{urlparse(emulator.base_url).port}")
    yield toxiproxy
    toxiproxy.heal()


def chaos_events(rng: random.Random, n: int, start: int) -> list[bytes | dict[str, Any]]:
    """Template events, ~2% malformed, ~20% with a near deadline (the flex lane in ``auto``)."""
    now = time.time()
    values: list[bytes | dict[str, Any]] = []
    for i in range(start, start + n):
        roll = rng.random()
        if roll < 0.02:
            values.append(b"not json %d" % i)
            continue
        event: dict[str, Any] = {"id": f"c{i}", "text": f"event {i}"}
        event["deadline"] = now + (600 if roll < 0.22 else 7 * 86400)
        values.append(event)
    return values


@pytest.mark.timeout(1800 if LONG else 600)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("guarantee", "mode"), CASES)
async def test_chaos_loses_nothing(
    chaos: Toxiproxy, chaos_broker: ChaosBroker, emulator: Any, tmp_path: Path, guarantee: str, mode: str, seed: int
) -> None:
    rng = random.Random(f"chaos-{guarantee}-{mode}-{seed}")
    faults = emulator.emulator.faults
    faults.seed, faults.batch_seconds, faults.item_error_rate = seed, 1.0, 0.02
    if mode != "batch":
        faults.flex_429_rate = 0.2
    direct = chaos_broker.direct
    topic = f"chaos-{guarantee[:2]}-{mode}-{seed}-{rng.randrange(10**6)}"
    await create_topic(direct, topic, partitions=3)
    provider_port = chaos.call("GET", "/proxies")["provider"]["listen"].rsplit(":", 1)[1]
    flex = {"concurrency": 8, "attempts": 3, "budget": "30s", "backoff_initial": "50ms", "backoff_max": "200ms",
            "fallback": "batch"}  # fmt: skip
    group = f"g-{topic}"
    config = write_config(
        tmp_path / "c.yaml", bootstrap=chaos_broker.bootstrap, base_url=f"http://127.0.0.1:{provider_port}/v1",
        group=group, processing_guarantee=guarantee,
        pipelines=[pipeline("chaos", topic, mode=mode, flex=flex, window={"max_requests": 50, "max_wait": "1s"})],
        provider={"timeout": 10, "create_timeout": 15},
    )  # fmt: skip
    ids: set[str] = set()
    malformed: set[str] = set()
    produced = 0

    async def feed(n: int) -> None:
        nonlocal produced
        values = chaos_events(rng, n, produced)
        produced += n
        for value, (partition, offset) in zip(values, await produce_placed(direct, topic, values), strict=True):
            key = value["id"] if isinstance(value, dict) else f"{topic}/{partition}/{offset}"
            ids.add(key)
            if not isinstance(value, dict):
                malformed.add(key)

    log: list[str] = []
    workers: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        workers.append(WorkerProcess(config, tmp_path / f"w{len(workers)}.log"))
        return workers[-1]

    worker = start()
    restart_round = rng.randrange(ROUNDS)
    try:
        for n in range(ROUNDS):
            await feed(EVENTS // ROUNDS)
            if n == restart_round:
                down = rng.uniform(1, 8)
                log.append(f"round {n}: broker restart, down {down:.1f}s")
                await asyncio.to_thread(chaos_broker.restart, down)
                continue
            proxy, kind, attributes = rng.choice(FAULTS)
            length, kill_at = rng.uniform(2, 10), rng.uniform(0, 12)
            log.append(f"round {n}: {proxy} {kind} for {length:.1f}s" + (f", SIGKILL at {kill_at:.1f}s"
                                                                          if kill_at < length + 2 else ""))  # fmt: skip
            chaos.fault(proxy, kind, attributes)
            began = time.monotonic()
            if kill_at < length + 2:  # a kill inside the fault or just after: the restart meets it
                await asyncio.sleep(kill_at)  # the scenario's timing, not a synchronisation
                worker.kill()
                worker = start()
            await asyncio.sleep(max(0.0, length - (time.monotonic() - began)))  # the fault's length
            chaos.heal()
            await asyncio.sleep(rng.uniform(0.5, 3))  # calm between rounds: the scenario's timing
        chaos.heal()
        assert worker.proc.poll() is None, f"the worker exited ({worker.proc.returncode}):\n{worker.log()[-4000:]}"

        async with TopicReader(direct, f"{topic}.results") as results, TopicReader(direct, f"{topic}.dlq") as dlq:
            try:
                await wait_every_id([results, dlq], ids, timeout=600 if LONG else 300)
            except AssertionError as exc:
                missing = ids - {v["id"] for v in results.values + dlq.values}
                raise AssertionError(f"{exc}; {len(missing)} ids without a fate, e.g. {sorted(missing)[:5]}; "
                                     f"rounds: {log}") from None  # fmt: skip
            ends = await end_offsets(direct, topic, 3)
            await wait_committed_offsets(direct, group, topic, ends, timeout=120)
            fates = Counter(v["id"] for v in results.values + dlq.values)
            reasons = Counter(v["reason"] for v in dlq.values)
            local = {v["id"] for v in dlq.values if v["reason"] == "invalid_json"}
            served = {v["id"] for v in results.values}
        duplicates = sum(n - 1 for n in fates.values())
        print(f"chaos {guarantee} {mode}/{seed}: {len(ids)} ids, {len(served)} served, dead letters "
              f"{dict(reasons)}, {duplicates} duplicates, {len(workers)} worker starts; {log}")  # fmt: skip
        assert set(fates) == ids
        assert local == malformed, "dead letters decided locally are exactly the malformed events"
        assert len(served) >= 0.9 * len(ids - malformed), f"well-formed events not served: {dict(reasons)}"
        if guarantee == "exactly_once":
            assert duplicates == 0, [i for i, n in fates.items() if n > 1][:10]
    finally:
        chaos.heal()
        for w in workers:
            w.kill()
