"""deploy/grafana/coach-suite.json is a well-formed Grafana dashboard whose PromQL refers only to
metrics the services export, and it shows cost by route, savings, latency and errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import services.common.metrics  # noqa: F401 - registers every metric

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "coach-suite.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("coach_"):
            names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert expr.count("[") == expr.count("]"), expr


def test_every_query_refers_to_an_exported_metric() -> None:
    exported = exported_series()
    dash = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            names = set(re.findall(r"\bcoach_[a-z0-9_]+", target["expr"]))
            assert names, (panel["title"], target["expr"])
            assert names <= exported, (panel["title"], names - exported)
            used |= names
    # The dashboard shows what an operator asks about first.
    for needed in ("coach_answer_cost_usd_nanos_total", "coach_baseline_cost_usd_nanos_total",
                   "coach_rpc_latency_seconds_bucket", "coach_rpc_requests_total",
                   "coach_upstream_errors_total", "coach_breaker_open", "coach_ledger_backlog"):
        assert needed in used, needed
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for words in ("cost by route", "savings", "p50", "p99", "errors"):
        assert words in titles, words
