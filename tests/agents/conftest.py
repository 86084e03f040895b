"""Fixtures of the agents' unit tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from providers import parse_settings
from tests.agents.lanes import Lane

#: A model (or Azure deployment) per kind of provider.
MODELS = {
    "openai": "gpt-5-mini", "azure": "gpt-4o-batch", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash",
}  # fmt: skip


@pytest.fixture
def make_lane(emulator: Any, tmp_path: Any) -> Callable[..., Lane]:
    """A batch lane against the emulator; ``provider`` and keyword arguments override settings."""

    def make(provider: dict[str, Any] | None = None, **pipeline: Any) -> Lane:
        kind = (provider or {}).get("kind", "openai")
        where: dict[str, Any] = {"base_url": emulator.base_url if kind == "openai" else emulator.root_url}
        if kind == "azure":
            where["api_version"] = "2024-10-21"
        document = {
            "provider": {
                **where, "api_key": "sk-unit", "poll_interval": 0.05, "max_retries": 0,
                "create_timeout": 5, "cancel_wait": 5, **(provider or {}),
            },
            "pipelines": [{
                "name": "unit", "input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq",
                "model": MODELS[kind], "retry": {"attempts": 3, "backoff_initial": "10ms", "backoff_max": "20ms"},
                **pipeline,
            }],
        }  # fmt: skip
        return Lane(parse_settings(document), tmp_path)

    return make
