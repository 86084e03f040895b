"""The registry of provider kinds: every kind gives the whole interface, and an unknown one is
refused naming the ``kind`` field."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import get_args

import pytest

from providers import KINDS, Kind, kind_of, make_provider
from providers.base import MISSING, Provider
from streams.errors import ConfigError
from streams.provider_config import FLEX_KINDS, KIND_ENDPOINTS, KIND_LIMITS, ProviderKind, ProviderSettings


@pytest.mark.parametrize("name", sorted(KINDS))
async def test_every_registered_kind_gives_every_part_of_the_interface(name: str) -> None:
    kind = KINDS[name]
    assert isinstance(kind, Kind) and kind.name == name and kind_of(name) is kind
    assert kind.classify(None) == MISSING  # a missing line goes another round, for every kind
    settings = ProviderSettings.model_validate({
        "kind": name, "api_key": "k", "base_url": "http://127.0.0.1:9", "api_version": "2024-10-21",
    } if name == "azure" else {"kind": name, "api_key": "k", "base_url": "http://127.0.0.1:9"})  # fmt: skip
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


def test_the_facts_still_kept_in_streams_name_exactly_the_registered_kinds() -> None:
    """Until they move into the kind folders, the configuration's kind facts (``streams/``) must
    name the same kinds as the registry: a kind added to one and not the other fails here."""
    assert set(get_args(ProviderKind)) == set(KINDS)
    assert set(KIND_LIMITS) == set(KINDS) and set(KIND_ENDPOINTS) == set(KINDS) and set(KINDS) >= FLEX_KINDS
