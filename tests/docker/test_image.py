"""The image as a user runs it: built from the Dockerfile, the CLI at its entrypoint."""

from __future__ import annotations

import pytest

from tests.docker.engine import docker

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]  # the first run builds the base images


def test_the_image_runs_the_cli(image: str) -> None:
    shown = docker("run", "--rm", image, "--help")
    assert shown.stdout.startswith("usage: batchstream") and "worker" in shown.stdout
    user = docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
    assert user == "10001", "runs unprivileged"


def test_the_image_without_a_configuration_says_so_in_one_line(image: str) -> None:
    proc = docker("run", "--rm", image, check=False)
    assert proc.returncode == 3, proc  # a configuration error
    assert proc.stderr.strip() == (
        "batchstream: cannot read configuration /config/batchstream.yaml: No such file or directory"
    ), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
