"""Run Apache Kafka from its Maven Central jars: resolve, format, start, wait, stop.

The classpath is resolved once by ``mvn dependency:copy-dependencies`` on ``pom.xml`` beside
this file and cached under ``$BATCHSTREAM_CACHE`` (default ``~/.cache/batchstream``), keyed by
the pom's content, so a second run starts in seconds and a changed pin resolves afresh.

Lifecycle: ``start()`` picks two free loopback ports (unless given), formats the KRaft log
directory when it is new, launches ``kafka.Kafka`` and returns only once an admin metadata
call succeeds. ``stop()`` sends SIGTERM, then SIGKILL after a timeout. Both are idempotent.
With ``data_dir`` the ports and cluster id are kept in ``devkafka.json`` there, because the
controller's address is written into the voter set at format time: a restart must reuse it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Self

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j.properties"

COMPOSE_HINT = "or run Kafka with Docker instead: `docker compose up kafka` (see docker-compose.yml)"


class ToolMissingError(RuntimeError):
    """java or mvn is not on PATH: nothing can be started."""


class BrokerStartError(RuntimeError):
    """The broker process exited or did not become ready in time."""


def cache_root() -> Path:
    return Path(os.environ.get("BATCHSTREAM_CACHE", Path.home() / ".cache" / "batchstream"))


def check_tools() -> None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise ToolMissingError(
            f"{' and '.join(missing)} not found on PATH: the local Kafka broker needs "
            "Java 17+ (e.g. `apt-get install openjdk-17-jre-headless`) and Maven "
            f"(`apt-get install maven`), {COMPOSE_HINT}"
        )


def ensure_classpath() -> Path:
    """Return the folder holding every runtime jar of the pinned Kafka, resolving it once."""
    check_tools()
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    lib = cache_root() / f"kafka-{digest}" / "lib"
    if (lib / ".complete").exists():
        return lib
    staging = lib.with_name(f"lib.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        "mvn", "-q", "-B", "-f", str(POM),
        "dependency:copy-dependencies", "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BrokerStartError(f"resolving Kafka's jars with Maven failed:\n{proc.stdout}\n{proc.stderr}")
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    (lib / ".complete").touch()
    return lib


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64, never starting with ``-``.

    As Kafka's own ``Uuid.randomUuid`` does: an id starting with ``-`` would be read as an
    option by ``kafka-storage format -t``.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={log_dir}
num.partitions=1
group.initial.rebalance.delay.ms=0
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=false
log.cleaner.backoff.ms=1000
"""


class KafkaBroker:
    """One broker+controller process on loopback.

    ``data_dir=None`` uses a temporary folder removed by ``stop()``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | str | None = None,
        heap: str = "512m",
        external: tuple[int, int] | None = None,
    ) -> None:
        #: A second client listener (port, advertised port), for clients reaching the broker
        #: through a proxy: its metadata names the advertised port, so they stay on the proxy.
        self._external = external
        self._requested_port = port
        self._data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._heap = heap
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.port = 0
        self.controller_port = 0
        self.workdir = Path()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def log_tail(self, lines: int = 200) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _prepare(self) -> tuple[str, bool]:
        """Choose ports and folders; return the cluster id and whether to format."""
        if self._data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="batchstream-kafka-")
            self.workdir = Path(self._tmp.name)
        else:
            self.workdir = self._data_dir
            self.workdir.mkdir(parents=True, exist_ok=True)
        state_file = self.workdir / "devkafka.json"
        if state_file.exists():
            state = json.loads(state_file.read_text())
            self.port = self._requested_port or int(state["port"])
            self.controller_port = int(state["controller_port"])
            return str(state["cluster_id"]), False
        self.port = self._requested_port or free_port()
        self.controller_port = free_port()
        cluster_id = new_cluster_id()
        state_file.write_text(
            json.dumps({"port": self.port, "controller_port": self.controller_port, "cluster_id": cluster_id})
        )
        return cluster_id, True

    def start(self, timeout: float = 90.0) -> str:
        """Start the broker and return its bootstrap address once it answers."""
        if self._proc is not None and self._proc.poll() is None:
            return self.bootstrap
        lib = ensure_classpath()
        cluster_id, fresh = self._prepare()
        props = self.workdir / "server.properties"
        text = SERVER_PROPERTIES.format(port=self.port, controller_port=self.controller_port,
                                        log_dir=self.workdir / "data")  # fmt: skip
        if self._external is not None:
            listen, advertised = self._external
            text = (
                text.replace("CONTROLLER://127.0.0.1:", f"EXTERNAL://127.0.0.1:{listen},CONTROLLER://127.0.0.1:", 1)
                .replace(f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},",
                         f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},EXTERNAL://127.0.0.1:{advertised},")
                .replace("PLAINTEXT:PLAINTEXT", "PLAINTEXT:PLAINTEXT,EXTERNAL:PLAINTEXT")
            )  # fmt: skip
        props.write_text(text)
        classpath = f"{lib}/*"
        java_log = [f"-Dlog4j.configuration=file:{LOG4J}"]
        if fresh:
            fmt = subprocess.run(
                ["java", *java_log, "-cp", classpath, "kafka.tools.StorageTool", "format",
                 "--standalone", "-t", cluster_id, "-c", str(props)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if fmt.returncode != 0:
                raise BrokerStartError(f"kafka-storage format failed:\n{fmt.stdout}\n{fmt.stderr}")
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            ["java", "-Xms256m", f"-Xmx{self._heap}", "-XX:+UseSerialGC",
             "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true", *java_log,
             "-cp", classpath, "kafka.Kafka", str(props)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BrokerStartError(f"Kafka exited with code {self._proc.returncode}:\n{self.log_tail()}")
            if asyncio.run(_answers(self.bootstrap)):
                return
        raise BrokerStartError(f"Kafka was not ready within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def wait(self) -> int:
        assert self._proc is not None
        return self._proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def _answers(bootstrap: str) -> bool:
    """True once the broker serves a metadata request and has a controller."""
    from sinks.topics import TopicAdmin

    host, _, port = bootstrap.rpartition(":")
    try:
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.close()
    except OSError:
        await asyncio.sleep(0.3)
        return False
    admin = TopicAdmin(bootstrap, {}, request_timeout=2.0)
    try:
        await admin.start()
        return await admin.describe_cluster() > 0
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        await asyncio.sleep(0.3)
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
