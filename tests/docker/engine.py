"""Helpers of the opt-in Docker suite: the docker CLI, compose projects, base-image stand-ins."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
IMAGE = "batchstream:local"
#: The ports the compose file publishes on the host's loopback.
PUBLISHED = (9092, 8089, 9464)


def docker(*args: str, timeout: float = 600, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(condition: Callable[[], bool], *, timeout: float, what: Callable[[], str], interval: float = 1.0) -> None:
    """Poll ``condition`` until it holds; fail with ``what()`` once ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what()}")
        time.sleep(interval)


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return docker("info", timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def port_free(port: int) -> bool:
    with socket.socket() as sock, contextlib.suppress(OSError):
        sock.bind(("127.0.0.1", port))
        return True
    return False


def build_standin(tag: str, script: str, *inputs: Path) -> None:
    """Build the stand-in for ``tag`` with ``script`` unless the tag exists: a real image (no
    ``batchstream.standin`` label), or a stand-in built from the same script and inputs."""
    digest = hashlib.sha256()
    files = sorted(p for item in (HERE / script, *inputs) for p in ([item] if item.is_file() else item.rglob("*")))
    for path in files:
        digest.update(path.name.encode() + (path.read_bytes() if path.is_file() else b""))
    label = digest.hexdigest()[:16]
    found = docker("image", "inspect", "--format", '{{index .Config.Labels "batchstream.standin"}}', tag, check=False)
    if found.returncode == 0 and found.stdout.strip() in ("", "<no value>", label):
        return
    proc = subprocess.run([str(HERE / script), tag, f"batchstream.standin={label}"],
                          capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert proc.returncode == 0, f"building the stand-in {tag} failed:\n{proc.stdout}\n{proc.stderr}"


class Compose:
    """One project of the project's docker-compose.yml, under a name of its own."""

    def __init__(self) -> None:
        self.project = f"batchstream-test-{uuid.uuid4().hex[:8]}"
        plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        self.command = ["docker", "compose"] if plugin.returncode == 0 else ["docker-compose"]
        self.command += ["-f", str(ROOT / "docker-compose.yml"), "-p", self.project]
        # the stack's defaults (the emulator as provider), whatever this shell exports
        self.env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "PROVIDER_BASE_URL")}

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self.command, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=self.env, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}{self.logs()}"
            )
        return proc

    def logs(self, tail: int = 60) -> str:
        cmd = [*self.command, "logs", "--no-color", "--tail", str(tail)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=self.env, check=False)
        return f"\n---- compose logs (tail) ----\n{proc.stdout}{proc.stderr}"

    def container(self, service: str) -> str:
        found = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}",
                       "--filter", f"label=com.docker.compose.service={service}").stdout.split()  # fmt: skip
        assert found, f"no container for the {service} service{self.logs()}"
        return found[0]

    def leftovers(self, volumes: set[str]) -> dict[str, list[str]]:
        """What of this project is still there: containers, networks, and volumes (the
        anonymous ones of its containers, given by name, carry no project label)."""
        label = f"label=com.docker.compose.project={self.project}"
        existing = set(docker("volume", "ls", "-q").stdout.split())
        labelled = set(docker("volume", "ls", "-q", "--filter", label).stdout.split())
        return {
            "containers": docker("ps", "-aq", "--filter", label).stdout.split(),
            "networks": docker("network", "ls", "-q", "--filter", label).stdout.split(),
            "volumes": sorted((volumes & existing) | labelled),
        }
