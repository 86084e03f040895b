"""Fixtures of the opt-in Docker suite (``-m docker``): the image and the compose stack, built and
run by a real Docker engine as a user would, from the project's Dockerfile and compose file.

No image registry is reachable here, so the base images (``python:3.11-slim``, the compose
file's ``apache/kafka``) are local stand-ins built by ``python-slim.sh`` and ``kafka.sh`` beside
this file, once per content of those scripts (an image's ``batchstream.standin`` label holds
that hash). A real image already under the tag, without the label, is used as it is.
Without an engine answering ``docker info`` every test here is skipped, saying so.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator

import pytest
import yaml

from tests.docker.engine import HERE, IMAGE, PUBLISHED, ROOT, Compose, build_standin, docker, engine_answers, port_free


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if not engine_answers():
        pytest.skip("no Docker engine answers `docker info` (start one to run the -m docker suite)")


@pytest.fixture(scope="session")
def base_images(docker_engine: None) -> None:
    """The Dockerfile's and the compose file's base images; stand-ins are built in parallel."""
    (python,) = {line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")}
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    (kafka,) = {s["image"] for s in services.values() if s.get("image", "").startswith("apache/kafka:")}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(build_standin, python, "python-slim.sh"),
            pool.submit(build_standin, kafka, "kafka.sh", HERE / "kafka"),
        ]
        for job in jobs:
            job.result()


@pytest.fixture(scope="session")
def image(base_images: None) -> str:
    """``batchstream:local`` built from the Dockerfile as the README says (classic builder)."""
    docker("build", "-t", IMAGE, ".", cwd=ROOT, env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=900)
    return IMAGE


@pytest.fixture(scope="module")
def compose(image: str) -> Iterator[Compose]:
    """A project of the stack, taken down with its volumes at the end whatever happened."""
    taken = [port for port in PUBLISHED if not port_free(port)]
    assert not taken, f"the compose file publishes 127.0.0.1:{taken}, which something on this host already uses"
    stack = Compose()
    try:
        yield stack
    finally:
        stack("--profile", "demo", "down", "-v", "--remove-orphans", check=False)
