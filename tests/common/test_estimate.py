"""`coach estimate`: an app's exported log through the router's decision and a token model."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from services.cli import CliSettings, run_cli
from services.common.pricing import PriceBook
from services.common.vocabulary import MessageType, Route
from services.estimate import Estimate, estimate, parse_log, render

DAY0 = 1_793_577_600


def test_bad_rows_are_named_by_line_and_reason() -> None:
    lines = [
        json.dumps({"user_id": "ana", "message": "hey", "ts": DAY0}),
        "{oops",
        json.dumps({"user_id": "ana", "message": "  ", "ts": DAY0}),
        "",
        json.dumps({"user_id": "bo", "message": "hi", "ts": "last tuesday"}),
        json.dumps({"user_id": "bo", "message": "hi", "ts": "2026-11-02T08:00:00Z",
                    "local_hour": 25}),
        json.dumps(["not", "an", "object"]),
    ]
    rows, errors = parse_log(lines)
    assert [r.line for r in rows] == [1]
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 3", "line 5", "line 6", "line 7"]
    assert "message must be a non-empty string" in errors[1]
    assert "'last tuesday'" in errors[2]


def _decide(route: Route, model: str = "gpt-5.4-mini") -> Any:
    return lambda message, count, hour: SimpleNamespace(
        route=route, model=model, message_type=MessageType.QUESTION)


def _rows(gap_s: int, n: int = 60) -> list[Any]:
    lines = [json.dumps({"user_id": "ana", "message": f"question number {i} about my habit?",
                         "ts": DAY0 + i * gap_s}) for i in range(n)]
    return parse_log(lines)[0]


def test_caching_regimes_only_help_what_arrives_within_the_retention() -> None:
    book = PriceBook.load()

    def run(gap_s: int) -> Estimate:
        return estimate(_rows(gap_s), _decide(Route.PATTERN), book, prefix_tokens=1500,
                        persona_tokens=400, strong_model="gpt-5.5")

    close = run(120)  # two minutes apart: warm in every regime that caches
    assert close.nanos[("baseline", "in_memory")] < close.nanos[("baseline", "none")]
    assert close.nanos[("baseline", "24h")] == close.nanos[("baseline", "in_memory")]
    hourly = run(3600)  # an hour apart: only the 24h retention keeps the prefix
    assert hourly.nanos[("baseline", "in_memory")] == hourly.nanos[("baseline", "none")]
    assert hourly.nanos[("baseline", "24h")] < hourly.nanos[("baseline", "none")]
    # canned replies cost nothing under the optimized policy
    assert all(close.nanos[("optimized", r)] == 0 for r in ("none", "in_memory", "24h"))
    assert close.routes == {"PATTERN": 60}


def test_monthly_figures_scale_the_logs_span_to_thirty_days() -> None:
    result = Estimate(rows=1, span_s=3 * 86_400, nanos={("baseline", "none"): 1_000_000_000})
    assert result.monthly_usd("baseline", "none") == 10.0
    text = render(result, ["line 4: not JSON"])
    assert "1 bad row(s) skipped (first: line 4: not JSON)" in text
    assert "| none | 10.00 | 0.00 |" in text


async def test_the_command_reads_a_file_and_reports_bad_rows(tmp_path: Path) -> None:
    log = tmp_path / "export.jsonl"
    log.write_text("\n".join([
        json.dumps({"user_id": "ana", "message": "hey", "ts": DAY0, "local_hour": 8}),
        json.dumps({"user_id": "ana", "message": "I want to run a 10k this spring",
                    "ts": DAY0 + 120}),
        "not json",
        json.dumps({"user_id": "bo", "message": "quick q: is stretching useful?",
                    "ts": DAY0 + 86_400}),
    ]) + "\n")
    out, err = io.StringIO(), io.StringIO()
    code = await run_cli(["estimate", "--messages", str(log)], CliSettings.from_env({}), out, err)
    assert code == 0
    assert f"{log}: line 3: not JSON" in err.getvalue()
    assert "| 24h |" in out.getvalue() and "route mix (optimized)" in out.getvalue()
