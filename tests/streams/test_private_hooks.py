"""faust-streaming's and aiokafka's private internals are used in one place (``streams/app.py``):
the releases they were read against are the ones pinned and installed, and every hook is there."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

from streams.app import READ_AGAINST, _has, missing_hooks

ROOT = Path(__file__).resolve().parents[2]


def test_the_pinned_releases_are_the_ones_read_and_installed() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {Requirement(d).name: Requirement(d).specifier for d in dependencies}
    for name, read in READ_AGAINST.items():
        assert str(pins[name]) == f"=={read}", f"{name} must be pinned to the release read: {read}"
        assert version(name) == read, f"{name} {version(name)} is installed; its internals were read in {read}"


def test_every_private_hook_is_there_and_a_missing_one_is_named() -> None:
    assert missing_hooks() == []

    class Conductorish:
        def __init__(self) -> None:
            self._tp_index: dict[str, int] = {}

    assert _has(Conductorish, "_tp_index"), "an attribute its __init__ sets counts"
    assert not _has(Conductorish, "_tp_to_callback_lock"), "one that nothing sets does not"
