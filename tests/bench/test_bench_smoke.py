"""`make bench ARGS=--quick` end to end: the report has its rows and nothing failed.

Timing figures are not asserted (a shared machine makes them noisy); only that the
run completes, the report carries every section, costs agree with the ledger and no
call errored.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The whole quick bench: longer than the suite's per-test timeout (its own run is bounded
# by the subprocess timeout below).
pytestmark = pytest.mark.timeout(300)


def test_quick_bench_runs_end_to_end(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--out", str(tmp_path)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=170,
    )
    print(f"quick bench took {time.monotonic() - started:.0f}s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "latest.md").read_text()
    for row in ("cost per 1,000 messages", "route mix canned / cheap / stateful / fallback",
                "upstream model calls per 1,000 messages",
                "stateful input tokens per turn, turn 30", "Chat latency p50 / p99",
                "messages per second", "bare grpc.aio health Check", "Router.Chat, canned reply",
                "Router.Chat, cheap tier", "floor of the cheap tier", "raw aiohttp POST", "Where a cheap-tier message's time goes",
                "the upstream request over HTTP, both ends", "**Scale**", "router.Chat", "**Quality**",
                "pattern precision", "**Targets**", "Machine:", "make bench"):
        assert row in report, f"missing {row!r} in the report"
    assert report in proc.stdout  # printed too
    results = json.loads((tmp_path / "latest.json").read_text())
    for policy in ("baseline", "optimized"):
        cost = results["cost"][policy]
        assert cost["all_errors"] == 0
        assert cost["ledger"]["total_calls"] == cost["all_messages"]
        assert cost["ledger"]["total_cost_nanos"] == cost["all_cost_nanos"] > 0
    assert results["cost"]["baseline"]["summary"]["routes"] == {
        "ASSISTANT": results["cost"]["baseline"]["summary"]["answered"]}
    errors = {t["name"]: t for t in results["targets"]}["errors, every phase"]
    assert errors["pass"], errors
    assert results["scale"]["summary"]["errors"] == 0
    single = results["latency"]["single"]
    for floor in ("floor_sdk", "floor_http"):
        assert single[floor]["calls"] > 0 and single[floor]["errors"] == 0, single[floor]
    # The cheap-tier anatomy: one cheap answer and one upstream attempt per call, and every
    # layer a caller's view minus its callee's, never negative (the callee's time is inside).
    anatomy = results["latency"]["anatomy"]
    assert anatomy["consistent"], anatomy
    assert all(ms >= 0 for ms in anatomy["layers_ms"].values()), anatomy["layers_ms"]
    assert abs(sum(anatomy["layers_ms"].values()) - anatomy["client_mean_ms"]) < 1e-6
