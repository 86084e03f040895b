"""The compose stack as the README runs it: `up --build -d`, the demo producer, `down -v`.

Everything is read from the host as a user would: the published broker port (127.0.0.1:9092),
the worker's /readyz, the containers' states. One project name per run, so a stack the developer
has running under the default name is left alone (its ports are not: they must be free).
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.docker.engine import Compose, docker, wait_for
from tests.support import TopicReader

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]  # the first run builds the base images

BOOTSTRAP = "127.0.0.1:9092"
#: The volumes the stack's containers had, for the check that `down -v` removes them.
VOLUMES: set[str] = set()


def _state(stack: Compose, service: str) -> dict[str, object]:
    state: dict[str, object] = json.loads(
        docker("inspect", "--format", "{{json .State}}", stack.container(service)).stdout
    )
    return state


def _readyz() -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen("http://127.0.0.1:9464/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except OSError as exc:
        return getattr(exc, "code", 0), {}


async def test_the_stack_comes_up_with_its_topics_and_a_ready_worker(compose: Compose) -> None:
    compose("up", "--build", "-d", timeout=900)
    for service in ("kafka", "emulator", "worker", "topics"):
        mounts = json.loads(docker("inspect", "--format", "{{json .Mounts}}", compose.container(service)).stdout)
        VOLUMES.update(mount["Name"] for mount in mounts if mount.get("Name"))

    def healthy() -> bool:
        state = _state(compose, "worker")
        assert state["Status"] == "running", f"the worker stopped: {state}\n{compose.logs()}"
        return state["Health"]["Status"] == "healthy"  # type: ignore[index]

    wait_for(healthy, timeout=240, what=lambda: f"the worker's healthcheck{compose.logs()}")
    assert _state(compose, "topics")["ExitCode"] == 0
    status, body = _readyz()
    assert status == 200 and body["ready"] is True, body
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        (described,) = await admin.describe_topics(["tickets"])
        topics = set(await admin.list_topics())
    finally:
        await admin.close()
    assert len(described["partitions"]) == 3, "created by the topics service"
    assert {"tickets.results", "tickets.dlq"} <= topics, "created by the worker"


async def test_the_demo_producers_tickets_come_back_as_results(compose: Compose) -> None:
    produced = compose("--profile", "demo", "up", "producer", timeout=300)
    assert "produced 200 tickets to tickets" in produced.stdout, produced.stdout
    assert _state(compose, "producer")["ExitCode"] == 0
    async with TopicReader(BOOTSTRAP, "tickets.results") as results:
        values = await results.until(200, timeout=240)
    ids = {value["id"] for value in values}
    assert len(ids) == 200 and all(value["pipeline"] == "tickets" for value in values)
    assert {value["mode"] for value in values} == {"batch"}, "config/docker.yaml's mode"
    async with TopicReader(BOOTSTRAP, "tickets.dlq") as dead:
        assert await dead.poll() == []
    # the README's way of reading them, inside the Kafka container
    read = compose("exec", "-T", "kafka", "/opt/kafka/bin/kafka-console-consumer.sh", "--bootstrap-server",
                   "localhost:9092", "--topic", "tickets.results", "--from-beginning", "--max-messages", "200",
                   "--timeout-ms", "60000", timeout=120)  # fmt: skip
    assert {json.loads(line)["id"] for line in read.stdout.splitlines() if line.startswith("{")} == ids


def test_the_worker_stops_gracefully_and_down_leaves_nothing(compose: Compose) -> None:
    compose("stop", "worker", timeout=120)
    state = _state(compose, "worker")
    assert state["ExitCode"] == 0, f"SIGTERM ends the worker cleanly: {state}\n{compose.logs()}"
    assert VOLUMES, "the stack's containers had volumes (the Kafka image declares one)"
    # with the demo profile: Compose v2's `down` leaves the producer's container otherwise
    compose("--profile", "demo", "down", "-v", timeout=300)
    assert compose.leftovers(VOLUMES) == {"containers": [], "networks": [], "volumes": []}
