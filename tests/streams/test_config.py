from pathlib import Path
from typing import get_args, get_origin

import pytest
from pydantic import BaseModel

from streams.config import PipelineSettings, Settings, load_settings, parse_settings
from streams.errors import ConfigError
from tests.support import settings_document

MINIMAL = settings_document(window={"max_requests": 500, "max_bytes": "10MB", "max_wait": "5s"})


def test_documented_example_parses_with_units_and_secrets() -> None:
    settings = parse_settings(MINIMAL, env={"OPENAI_API_KEY": "sk-secret"})
    window = settings.pipelines[0].window
    assert (window.max_requests, window.max_bytes, window.max_wait) == (500, 10_000_000, 5.0)
    assert settings.provider.api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(settings) and "sk-secret" not in str(settings)


def test_missing_variable_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"provider\.api_key: environment variable OPENAI_API_KEY is not set"):
        parse_settings(MINIMAL, env={})


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"max_wait": "soon"}, "pipelines.0.window.max_wait"),
        ({"max_bytes": "ten"}, "pipelines.0.window.max_bytes"),
        ({"max_requests": 0}, "pipelines.0.window.max_requests"),
    ],
)
def test_bad_window_values_name_the_field(patch: dict[str, object], field: str) -> None:
    doc = {**MINIMAL, "pipelines": [{**MINIMAL["pipelines"][0], "window": patch}]}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_settings(doc, env={"OPENAI_API_KEY": "k"})


def test_unknown_key_and_bad_mode_are_refused() -> None:
    doc = {**MINIMAL, "pipelines": [{**MINIMAL["pipelines"][0], "mode": "turbo", "colour": 1}]}  # type: ignore[dict-item]
    with pytest.raises(ConfigError) as info:
        parse_settings(doc, env={"OPENAI_API_KEY": "k"})
    assert "pipelines.0.mode" in str(info.value) and "pipelines.0.colour" in str(info.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mode": "flex", "endpoint": "/v1/embeddings"}, "not offered for /v1/embeddings"),
        ({"max_batch_latency": "2h"}, r"flex\.fallback: 'batch' cannot be combined with max_batch_latency"),
        ({"mode": "auto", "latency_objective": "1h"}, r"latency_objective: 3600s is shorter than the batch path"),
        ({"flex": {"concurrency": 0}}, r"pipelines\.0\.flex\.concurrency"),
        ({"flex": {"fallback": "retry"}}, r"pipelines\.0\.flex\.fallback"),
        ({"max_batch_latency": "soon", "flex": {"fallback": "standard"}}, r"pipelines\.0\.max_batch_latency"),
    ],
)
def test_inconsistent_flex_settings_fail_at_start_up(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings(settings_document(api_key="k", **overrides), env={})


def test_flex_defaults_and_a_consistent_auto_pipeline() -> None:
    settings = parse_settings(
        settings_document(
            api_key="k", mode="auto", max_batch_latency="1h", latency_objective="2h", flex={"fallback": "standard"}
        ),
        env={},
    )
    pipeline = settings.pipelines[0]
    assert (pipeline.flex.timeout, pipeline.flex.concurrency) == (900.0, 16)
    assert pipeline.batch_latency_bound == 3600 + 5


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if annotation is not None and get_origin(annotation) is list and get_args(annotation)[0] is PipelineSettings:
            keys += leaf_keys(PipelineSettings)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_every_setting_is_in_the_configuration_reference() -> None:
    reference = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    keys = leaf_keys(Settings)
    assert "flex.fallback" in keys and "kafka" not in keys
    missing = [key for key in keys if f"`{key.split('.', 1)[1] if key.startswith(('kafka.', 'provider.')) else key}`"
               not in reference]  # fmt: skip
    assert missing == [], "settings missing from docs/configuration.md"
