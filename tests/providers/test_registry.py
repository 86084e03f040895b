"""The registry of provider kinds: every kind gives the whole interface, and an unknown one is
refused naming the ``kind`` field."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from providers import FACTS, KINDS, Kind, kind_of, make_provider
from providers.base import MISSING, Provider
from streams.errors import ConfigError
from streams.provider_config import ProviderSettings


@pytest.mark.parametrize("name", sorted(KINDS))
async def test_every_registered_kind_gives_every_part_of_the_interface(name: str) -> None:
    kind = KINDS[name]
    assert isinstance(kind, Kind) and kind.name == name and kind_of(name) is kind
    assert kind.classify(None) == MISSING  # a missing line goes another round, for every kind
    settings = ProviderSettings.model_validate({
        "kind": name, "api_key": "k", "base_url": "http://127.0.0.1:9", "api_version": "2024-10-21",
    } if name == "azure" else {"kind": name, "api_key": "k", "base_url": "http://127.0.0.1:9"},
        context={"kinds": FACTS})  # fmt: skip
    provider = make_provider("p", settings)
    try:
        assert isinstance(provider, Provider) and provider.kind == name and provider.name == "p"
    finally:
        await provider.close()


def test_an_unknown_kind_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^kind: no provider kind 'bedrock' \(registered: anthropic, azure, gemini"):
        kind_of("bedrock")


def test_the_registry_imports_no_sdk_but_openais() -> None:
    """The anthropic and google-genai SDKs are imported only when a provider of their kind opens."""
    code = "import sys, providers.registry; print(sorted(m for m in ('anthropic', 'google.genai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_kind_folder_is_registered_and_shipped() -> None:
    """A folder under ``providers/`` is a kind: in the registry, and a package of the wheel."""
    root = Path(__file__).resolve().parents[2]
    folders = {p.parent.name for p in (root / "providers").glob("*/__init__.py")}
    shipped = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert folders == set(KINDS)
    assert {f"providers.{name}" for name in folders} <= shipped, "add the folder to [tool.setuptools] packages"


def test_every_kind_brings_its_own_facts_and_the_formats_of_its_endpoints() -> None:
    """The facts ``streams/`` reads of a kind are the folder's own: named as the kind, with at
    least one endpoint (the first the default) and batch limits."""
    for name, kind in KINDS.items():
        assert FACTS[name] is kind.facts and kind.facts.name == name
        assert kind.facts.endpoints and all(n > 0 for n in kind.facts.limits)
