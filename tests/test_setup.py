"""``scripts/setup`` on a fresh copy of the project prints nothing: no setuptools or pip warning
(a license table, a data folder outside ``packages``, the editable-install caveat...)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT


@pytest.mark.timeout(900)
def test_setup_on_a_fresh_copy_is_quiet(tmp_path: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    copy = tmp_path / "batchstream"
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    proc = subprocess.run([str(copy / "scripts" / "setup")], cwd=copy, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout + proc.stderr == "", "scripts/setup prints nothing on success"
    version = subprocess.run([str(copy / ".venv" / "bin" / "batchstream"), "--version"], capture_output=True,
                             text=True, check=True)  # fmt: skip
    assert version.stdout.startswith("batchstream 0.1.0")
    assert not (copy / ".venv" / "bin" / "pytest").exists(), "the main job installs no dev extras"
