"""Prices: the defaults, snapshots priced as their model, configured overrides, each path's share."""

from __future__ import annotations

import pytest

from providers import FACTS, parse_settings
from streams.errors import ConfigError
from streams.pricing import Cost, ModelPrice, Pricing
from tests.support import settings_document


def test_each_path_pays_its_share_of_the_real_time_price() -> None:
    pricing = Pricing(kinds=FACTS.values())
    # gpt-5-mini: $0.25 / $2.00 per million input / output tokens
    assert pricing.cost("gpt-5-mini", 1_000_000, 500_000, "standard") == Cost(paid=1.25, realtime=1.25)
    assert pricing.cost("gpt-5-mini", 1_000_000, 500_000, "batch") == Cost(paid=0.625, realtime=1.25)
    assert pricing.cost("gpt-5-mini", 1_000_000, 500_000, "flex") == Cost(paid=0.625, realtime=1.25)


def test_a_dated_snapshot_is_priced_as_its_model_and_an_unknown_model_gets_no_price() -> None:
    pricing = Pricing(kinds=FACTS.values())
    assert pricing.price("gpt-5-mini-2025-08-07") == pricing.price("gpt-5-mini") != pricing.price("gpt-5")
    assert pricing.price("claude-sonnet-4-5-20250929") == pricing.price("claude-sonnet-4-5")
    assert pricing.price("gpt-5-pro") is None, "a different model, not a snapshot of gpt-5"
    assert pricing.cost("my-finetune", 10, 10, "batch") is None


def test_configured_prices_override_and_add_models() -> None:
    document = settings_document(api_key="k")
    document["pricing"] = {"gpt-5-mini": {"input": 1.0, "output": 1.0}, "vllm-llama": {"input": 0.1, "batch": 0.3}}
    settings = parse_settings(document, env={})
    pricing = Pricing(settings.pricing, kinds=settings.kinds.values())
    assert pricing.price("gpt-5-mini") == ModelPrice(input=1.0, output=1.0)
    assert pricing.cost("vllm-llama", 2_000_000, 0, "batch") == Cost(paid=0.06, realtime=0.2)
    document["pricing"] = {"m": {"input": -1}}
    with pytest.raises(ConfigError, match=r"pricing\.m\.input"):
        parse_settings(document, env={})
