"""``batchstream demo``, the README's main job, run as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.kafka


def row(output: str, label: str) -> str:
    match = re.search(rf"│ {re.escape(label)}\s+│ ([^│]*?)\s+│", output)
    assert match, f"no {label!r} row in the summary:\n{output}"
    return match.group(1)


#: The README's main job, Gemini in auto mode (batch and flex), and OpenAI's auto mode under
#: exactly_once; ``BATCHSTREAM_SOAK=long`` adds Anthropic and the other modes (their routing,
#: fallbacks and hedging are covered by the end-to-end tests of ``tests/agents``).
ALO, EOS = "at_least_once", "exactly_once"
CASES: list[Any] = [("openai", "batch", ALO), ("gemini", "auto", ALO), ("openai", "auto", EOS)]
if os.environ.get("BATCHSTREAM_SOAK") == "long":
    LONG = [("anthropic", "auto", ALO), ("openai", "flex", ALO), ("openai", "auto", ALO), ("gemini", "batch", ALO),
            ("gemini", "flex", EOS), ("anthropic", "batch", EOS)]  # fmt: skip
    CASES += [pytest.param(*case, marks=pytest.mark.soak) for case in LONG]


MODELS = {"openai": "gpt-5-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}


@pytest.mark.parametrize(("provider", "mode", "guarantee"), CASES)
def test_demo_gives_every_ticket_its_fate(provider: str, mode: str, guarantee: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agents.cli", "demo", "--events", "300", "--mode", mode, "--provider", provider,
         "--guarantee", guarantee],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "100"},
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert row(output, "results") == "300"
    assert row(output, "missing") == "0"
    assert row(output, "duplicates") == "0"
    assert row(output, "dead letters").split()[0] == "5", "the five malformed events"
    assert re.search(r'ticket-\d+:\s+\{"category":', output), "sample results are shown"
    served = row(output, "served by (path/tier)")
    paths = {part.split("/")[0] for part in served.split()}
    assert f"({MODELS[provider]} list" in output, "costs at the provider's model's prices"
    if provider == "anthropic":  # no flex tier: the urgent tickets are standard calls
        assert paths == {"batch", "standard"}, served
    elif mode == "flex":  # a ticket refused on every flex attempt falls back to a batch
        assert "flex" in paths and paths <= {"flex", "batch"}, served
    else:
        assert paths == {"batch": {"batch"}, "auto": {"flex", "batch"}}[mode], served
