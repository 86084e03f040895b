"""Every YAML example in the README and ``docs/`` is a configuration the worker accepts.

Fenced ```yaml blocks are read from the files themselves. A block with ``pipelines:`` is a whole
configuration and is validated as one (a ``...`` entry in a pipeline stands for the fields the
example leaves out, which the smallest valid pipeline supplies); any other block is a fragment,
valid if it validates as a section of the smallest valid document or as fields of its pipeline.
Inline snippets that set a top-level section (```webhooks: {...}```) are held to the same rule.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import pytest
import yaml

from providers import parse_settings
from streams.config import PipelineSettings, Settings
from streams.errors import ConfigError
from tests.support import ROOT, settings_document

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)
ANY_FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`]+)`")
ELIDED = "..."


def _blocks() -> list[Any]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCED.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(pytest.param(textwrap.dedent(match.group(1)), id=f"{path.name}:{line}"))
    return found


def _inline_sections() -> list[Any]:
    """Inline code that sets a top-level section (``webhooks: {...}``, ``metrics_port: 9464``)."""
    found = []
    for path in DOCS:
        text = ANY_FENCED.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text())
        for match in INLINE.finditer(text):
            snippet = " ".join(match.group(1).split())
            key, colon, value = snippet.partition(":")
            if key in Settings.model_fields and key != "provider" and colon and value.strip():
                line = text.count("\n", 0, match.start()) + 1
                found.append(pytest.param(snippet, id=f"{path.name}:{line}"))
    return found


def _env(snippet: str) -> dict[str, str]:
    """A dummy for every ``${VARIABLE}`` the snippet reads."""
    return {name: f"dummy-{name.lower()}" for name in re.findall(r"\$\{(\w+)\}", snippet)}


def _whole(document: dict[str, Any]) -> dict[str, Any]:
    base = settings_document()["pipelines"][0]
    pipelines = []
    for entry in document["pipelines"]:
        if ELIDED in entry:
            entry = {**{k: v for k, v in base.items() if k != "model"}, **entry}
            del entry[ELIDED]
        pipelines.append(entry)
    if "provider" not in document and "providers" not in document:
        document = {**document, "provider": {"api_key": "${OPENAI_API_KEY}"}}
    return {**document, "pipelines": pipelines}


def validate(snippet: str) -> None:
    """Parse ``snippet`` as YAML and validate it as a configuration or a part of one."""
    document = yaml.safe_load(snippet)
    assert isinstance(document, dict), f"not a mapping: {document!r}"
    env = {"OPENAI_API_KEY": "sk-dummy", **_env(snippet)}
    if "pipelines" in document:
        parse_settings(_whole(document), source="example", env=env)
        return
    problems = []
    if set(document) <= set(Settings.model_fields):
        try:
            parse_settings({**settings_document(), **document}, source="section", env=env)
            return
        except ConfigError as exc:
            problems.append(str(exc))
    if set(document) <= set(PipelineSettings.model_fields):
        try:
            parse_settings(settings_document(**document), source="pipeline fields", env=env)
            return
        except ConfigError as exc:
            problems.append(str(exc))
    raise AssertionError(f"neither a section nor pipeline fields: {problems or sorted(document)}")


def test_the_docs_hold_examples() -> None:
    assert len(_blocks()) >= 7 and any("webhooks" in p.values[0] for p in _inline_sections())


@pytest.mark.parametrize("snippet", _blocks())
def test_every_yaml_block_is_a_valid_configuration(snippet: str) -> None:
    validate(snippet)


@pytest.mark.parametrize("snippet", _inline_sections())
def test_every_inline_section_is_valid(snippet: str) -> None:
    validate(snippet)


@pytest.mark.parametrize(
    ("snippet", "said"),
    [
        ("webhooks: {secret: ${OPENAI_WEBHOOK_SECRET}}", "expected ',' or '}'"),  # the README's, once
        ("webhooks: {topic: t}", "webhooks.secret"),
        ("pipelines:\n  - {name: t, ...}", "pipelines.0.model"),  # '...' stands for the topics, not the model
        ("pipelines:\n  - {name: t, window: {max_wait: soon}, ...}", "window.max_wait"),
        ("flex: {fallback: retry}", "flex.fallback"),
        ("colour: red", "neither a section nor pipeline fields"),
    ],
)
def test_an_invalid_example_is_refused(snippet: str, said: str) -> None:
    with pytest.raises((AssertionError, ConfigError, yaml.YAMLError), match=re.escape(said)):
        validate(snippet)
