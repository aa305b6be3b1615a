#!/usr/bin/env python3
"""Score the router's decisions on a labelled JSONL set; exit 1 when a target is missed.

Each line: ``text``, ``local_hour``, ``current_streak``, ``message_count``,
optional ``history`` (list of ``{"role": "user"|"coach", "text": ...}``),
``expect`` (``canned`` | ``simple`` | ``complex`` | ``safety``) and optional
``type`` (``MESSAGE_TYPE_*``, for the confusion table).

Figures (targets in brackets):

* pattern precision: share of canned replies that went to ``canned`` messages [≥ 0.97]
* canned coverage: share of ``canned`` messages answered canned [≥ 0.70]
* complex recall: share of ``complex`` messages sent to the stateful tier [≥ 0.95]
* safety recall: share of ``safety`` messages on the stateful tier as CRISIS [= 1.0]
* cheap share: share of ``canned`` + ``simple`` answered canned or by the cheap tier [≥ 0.90]

Usage: ``scripts/eval_router.py [--file F] [--show-misses] [--policy optimized|baseline]``
(default file: tests/router/eval_set.jsonl; ../shared/eval/routing-sample.jsonl has the same shape).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from services.router.decision import (
    Decision,
    MessageContext,
    PriorTurn,
    Route,
    Router,
)

DEFAULT_FILE = REPO / "tests" / "router" / "eval_set.jsonl"
SHARED_SAMPLE = REPO.parent / "shared" / "eval" / "routing-sample.jsonl"
EXPECTS = ("canned", "simple", "complex", "safety")
TARGETS: dict[str, tuple[str, float]] = {
    "pattern_precision": (">=", 0.97),
    "canned_coverage": (">=", 0.70),
    "complex_recall": (">=", 0.95),
    "safety_recall": (">=", 1.0),
    "cheap_share": (">=", 0.90),
}


@dataclass(frozen=True)
class Case:
    """One labelled message."""

    line: int
    text: str
    expect: str
    expected_type: str
    ctx: MessageContext


@dataclass(frozen=True)
class Outcome:
    case: Case
    decision: Decision

    @property
    def ok(self) -> bool:
        route = self.decision.route
        return {
            "canned": route is Route.PATTERN,
            "simple": route is Route.COMPLETIONS,
            "complex": route is Route.ASSISTANT,
            "safety": route is Route.ASSISTANT and self.decision.crisis,
        }[self.case.expect]


def load_cases(path: Path) -> list[Case]:
    cases: list[Case] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        row = json.loads(raw)
        expect = row["expect"]
        if expect not in EXPECTS:
            raise ValueError(f"{path}:{n}: expect must be one of {EXPECTS}, got {expect!r}")
        history = tuple(
            PriorTurn(role="coach" if t["role"] == "coach" else "user", text=t["text"])
            for t in row.get("history", [])
        )
        ctx = MessageContext(
            display_name=row.get("display_name", ""),
            current_streak=int(row.get("current_streak", 0)),
            local_hour=row.get("local_hour"),
            timezone=row.get("timezone", ""),
            message_count=int(row.get("message_count", 10)),
            history=history,
            last_canned_reply=row.get("last_canned_reply", ""),
        )
        cases.append(Case(n, row["text"], expect, row.get("type", ""), ctx))
    return cases


def _share(hits: int, total: int) -> float:
    return hits / total if total else 1.0


def score(outcomes: Sequence[Outcome]) -> dict[str, float]:
    by = Counter(o.case.expect for o in outcomes)
    canned_answers = [o for o in outcomes if o.decision.route is Route.PATTERN]
    cheap = (Route.PATTERN, Route.COMPLETIONS)
    return {
        "pattern_precision": _share(sum(o.case.expect == "canned" for o in canned_answers),
                                    len(canned_answers)),
        "canned_coverage": _share(sum(o.case.expect == "canned" and o.ok for o in outcomes),
                                  by["canned"]),
        "complex_recall": _share(sum(o.case.expect == "complex" and o.ok for o in outcomes),
                                 by["complex"]),
        "safety_recall": _share(sum(o.case.expect == "safety" and o.ok for o in outcomes),
                                by["safety"]),
        "cheap_share": _share(
            sum(o.case.expect in ("canned", "simple") and o.decision.route in cheap
                for o in outcomes),
            by["canned"] + by["simple"]),
    }


def missed_targets(figures: dict[str, float]) -> list[str]:
    return [name for name, (_, target) in TARGETS.items() if figures[name] < target - 1e-9]


def evaluate(router: Router, cases: Iterable[Case]) -> list[Outcome]:
    return [Outcome(c, router.decide(c.text, c.ctx)) for c in cases]


def confusion_table(outcomes: Sequence[Outcome]) -> str:
    typed = [o for o in outcomes if o.case.expected_type]
    if not typed:
        return "(no 'type' labels: confusion table skipped)"
    names = [t.removeprefix("MESSAGE_TYPE_") for t in (
        "GREETING", "ACKNOWLEDGEMENT", "CHECK_IN", "CELEBRATION", "STRUGGLING", "QUESTION",
        "ACCOUNTABILITY", "GOAL_SETTING", "PATTERN_ANALYSIS", "DEEP_COACHING", "CRISIS")]
    short = {n: n[:5] for n in names}
    counts = Counter((o.case.expected_type.removeprefix("MESSAGE_TYPE_"),
                      o.decision.message_type.name) for o in typed)
    corner = "expected/predicted"
    head = f"{corner:<22}" + "".join(f"{short[n]:>6}" for n in names) + f"{'acc':>7}"
    lines = [head]
    for exp in names:
        row_total = sum(counts[(exp, p)] for p in names)
        if not row_total:
            continue
        cells = "".join(f"{counts[(exp, p)] or '.':>6}" for p in names)
        lines.append(f"{exp:<22}{cells}{counts[(exp, exp)] / row_total:>7.2f}")
    agree = sum(counts[(n, n)] for n in names)
    lines.append(f"type agreement: {agree}/{len(typed)} = {agree / len(typed):.3f}")
    return "\n".join(lines)


def report(path: Path, outcomes: Sequence[Outcome], show_misses: bool) -> tuple[str, bool]:
    figures = score(outcomes)
    missed = missed_targets(figures)
    by = Counter(o.case.expect for o in outcomes)
    summary = ", ".join(f"{k} {by[k]}" for k in EXPECTS)
    out = [f"{path} — {len(outcomes)} messages ({summary})"]
    for name, value in figures.items():
        op, target = TARGETS[name]
        flag = "MISSED" if name in missed else "ok"
        out.append(f"  {name:<18} {value:6.3f}   target {op} {target:.2f}   {flag}")
    routes = Counter(o.decision.route.name for o in outcomes)
    out.append("  routes: " + ", ".join(f"{k} {v}" for k, v in sorted(routes.items())))
    out.append("")
    out.append(confusion_table(outcomes))
    misses = [o for o in outcomes if not o.ok]
    if misses and show_misses:
        out.append("")
        out.append(f"route misses ({len(misses)}):")
        for o in misses:
            d = o.decision
            out.append(f"  line {o.case.line}: expected {o.case.expect}, got {d.route.name}"
                       f"{' CRISIS' if d.crisis else ''} {d.message_type.name}: {o.case.text!r}"
                       f"\n      reason: {d.reason}")
    return "\n".join(out), not missed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--file", type=Path, action="append",
                        help=f"labelled JSONL (repeatable; default {DEFAULT_FILE.relative_to(REPO)})")
    parser.add_argument("--show-misses", action="store_true", help="list every route miss")
    parser.add_argument("--policy", default="optimized", choices=("optimized", "baseline"))
    args = parser.parse_args(argv)
    router = Router.from_files(policy=args.policy)
    all_ok = True
    for path in args.file or [DEFAULT_FILE]:
        text, ok = report(path, evaluate(router, load_cases(path)), args.show_misses)
        print(text)
        print()
        all_ok &= ok
    print("all targets met" if all_ok else "TARGETS MISSED")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
