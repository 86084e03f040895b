from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from providers import load_settings, parse_settings
from streams.config import PipelineSettings, Settings
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
        options = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) in (Union, UnionType) and len(options) == 1:
            annotation = options[0]  # an optional section: its keys count
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
    assert {"flex.fallback", "provider.kind", "provider.limits.max_bytes_per_batch"} <= set(keys)
    assert "kafka" not in keys
    missing = [key for key in keys if f"`{key.split('.', 1)[1] if key.startswith(('kafka.', 'provider.')) else key}`"
               not in reference]  # fmt: skip
    assert missing == [], "settings missing from docs/configuration.md"


def _two_providers(**pipeline: object) -> dict[str, object]:
    return {
        "providers": {
            "claude": {"kind": "anthropic", "api_key": "${ANTHROPIC_API_KEY}"},
            "gpt": {"kind": "openai", "api_key": "${OPENAI_API_KEY}"},
        },
        "pipelines": [{"name": "t", "input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq",
                       "model": "claude-sonnet-4-5", **pipeline}],
    }  # fmt: skip


def test_a_providers_map_serves_pipelines_by_name_with_the_kinds_endpoint_by_default() -> None:
    env = {"ANTHROPIC_API_KEY": "sk-ant-secret", "OPENAI_API_KEY": "sk-secret"}
    settings = parse_settings(_two_providers(provider="claude"), env=env)
    pipeline = settings.pipelines[0]
    name, provider = settings.provider_of(pipeline)
    assert (name, provider.kind, pipeline.endpoint, pipeline.max_tokens) == (
        "claude",
        "anthropic",
        "/v1/messages",
        1024,
    )
    assert provider.batch_limits == (100_000, 256_000_000)
    assert "sk-ant-secret" not in repr(settings)


def test_the_single_provider_form_is_the_default_provider_unchanged() -> None:
    settings = parse_settings(MINIMAL, env={"OPENAI_API_KEY": "k"})
    name, provider = settings.provider_of(settings.pipelines[0])
    assert (name, provider.kind, settings.pipelines[0].endpoint) == ("default", "openai", "/v1/chat/completions")
    assert provider.batch_limits == (50_000, 200_000_000)


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ({}, r"pipelines\.0\.provider: required when several providers are configured \(claude, gpt\)"),
        ({"provider": "gemini"}, r"pipelines\.0\.provider: no provider named 'gemini' \(configured: claude, gpt\)"),
        (
            {"provider": "claude", "endpoint": "/v1/chat/completions"},
            r"pipelines\.0\.endpoint: provider 'claude' \(kind: anthropic\) serves /v1/messages",
        ),
        ({"provider": "gpt", "endpoint": "/v1/messages"}, r"pipelines\.0\.endpoint: provider 'gpt' \(kind: openai\)"),
        (
            {"provider": "claude", "mode": "flex"},
            r"pipelines\.0\.mode: provider 'claude' \(kind: anthropic\) has no "
            r"flex tier.*set flex\.fallback: standard",
        ),
        (
            {"provider": "claude", "max_batch_latency": "1h", "flex": {"fallback": "dead_letter"}},
            r"pipelines\.0\.max_batch_latency: provider 'claude' \(kind: anthropic\) has no flex tier",
        ),
        ({"provider": "claude", "metadata": {"team": "a"}}, r"pipelines\.0\.metadata: Anthropic message batches"),
    ],
)
def test_a_pipeline_asking_what_its_provider_lacks_fails_naming_the_field(
    pipeline: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings(_two_providers(**pipeline), env={"ANTHROPIC_API_KEY": "a", "OPENAI_API_KEY": "o"})


def test_a_gemini_provider_defaults_to_generate_content_offers_flex_and_refuses_metadata() -> None:
    doc = {"providers": {"g": {"kind": "gemini", "api_key": "${GEMINI_API_KEY}"}}, "pipelines": [
        {"name": "t", "input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq",
         "model": "gemini-2.5-flash", "mode": "auto", "max_batch_latency": "1h",
         "flex": {"fallback": "dead_letter"}}]}  # fmt: skip
    settings = parse_settings(doc, env={"GEMINI_API_KEY": "AIza-secret"})
    name, provider = settings.provider_of(settings.pipelines[0])
    assert (name, provider.kind, settings.pipelines[0].endpoint) == ("g", "gemini", "generateContent")
    assert provider.offers_flex and provider.inline_bytes == 20_000_000 and "AIza-secret" not in repr(settings)
    doc["pipelines"][0]["metadata"] = {"team": "a"}  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"pipelines\.0\.metadata: Gemini batches carry no metadata"):
        parse_settings(doc, env={"GEMINI_API_KEY": "k"})


def test_flex_on_a_provider_without_flex_is_allowed_only_with_the_standard_fallback() -> None:
    settings = parse_settings(_two_providers(provider="claude", mode="flex", flex={"fallback": "standard"}),
                              env={"ANTHROPIC_API_KEY": "a", "OPENAI_API_KEY": "o"})  # fmt: skip
    assert settings.pipelines[0].mode == "flex"


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ({"kind": "azure", "api_key": "k", "base_url": "https://x.openai.azure.com"}, r"provider: .*api_version"),
        ({"kind": "anthropic", "api_key": "k", "organization": "org"}, r"provider: organization is an openai setting"),
        ({"kind": "bedrock", "api_key": "k"}, r"provider\.kind"),
        ({"kind": "openai", "api_key": "k", "inline_bytes": "1MB"}, r"provider: inline_bytes is a gemini setting"),
        ({"kind": "gemini", "api_key": "k", "inline_bytes": "30MB"}, r"provider\.inline_bytes"),
    ],
)
def test_bad_provider_entries_name_the_field(provider: dict[str, object], message: str) -> None:
    doc = {**MINIMAL, "provider": provider}
    with pytest.raises(ConfigError, match=message):
        parse_settings(doc, env={})


def test_azure_serves_chat_and_embeddings_and_configured_limits_replace_the_kinds() -> None:
    azure = {"kind": "azure", "api_key": "k", "base_url": "https://x.openai.azure.com", "api_version": "2024-10-21"}
    with pytest.raises(ConfigError, match=r"pipelines\.0\.endpoint: provider 'default' \(kind: azure\) serves"):
        responses = [{**MINIMAL["pipelines"][0], "endpoint": "/v1/responses"}]  # type: ignore[dict-item]
        parse_settings({**MINIMAL, "provider": azure, "pipelines": responses}, env={})
    bigger = {**azure, "kind": "openai", "base_url": "http://vllm:8000/v1", "api_version": None,
              "limits": {"max_requests_per_batch": 200_000}}  # fmt: skip
    settings = parse_settings({**MINIMAL, "provider": bigger}, env={})
    assert settings.provider_of(settings.pipelines[0])[1].batch_limits == (200_000, 200_000_000)
