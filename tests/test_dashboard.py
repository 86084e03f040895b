"""The Grafana dashboard queries only metrics the worker exports, with labels they carry."""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY

import agents.metrics  # noqa: F401 - registers the worker's metrics
from tests.support import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "batchstream.json"


def _exported() -> dict[str, set[str]]:
    """Every sample name the worker's metrics export, with its label names."""
    found: dict[str, set[str]] = {}
    for metric in REGISTRY.collect():
        if not metric.name.startswith("batchstream_"):
            continue
        labels = set(getattr(REGISTRY._names_to_collectors.get(metric.name), "_labelnames", ()))
        suffixes = ("_total",) if metric.type == "counter" else ("",)
        for suffix in suffixes:
            found[metric.name + suffix] = labels
    return found


def test_every_panel_queries_exported_metrics_by_their_labels():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exported()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) == len(dashboard["panels"]) >= 15
    for expr in exprs:
        names = set(re.findall(r"\bbatchstream_[a-z_]+", expr))
        assert names and names <= exported.keys(), f"{expr}: not exported: {names - exported.keys()}"
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            for label in (part.strip() for part in grouping.split(",")):
                assert any(label in exported[n] for n in names), f"{expr}: no metric carries {label!r}"
    assert {"batchstream_cost_usd_total", "batchstream_cost_realtime_usd_total"} <= {
        n for e in exprs for n in re.findall(r"\bbatchstream_[a-z_]+", e)}  # fmt: skip
