"""Labelled messages (JSON Lines) and the figures the router is held to.

Each line: ``text``, ``local_hour``, ``current_streak``, ``message_count``, optional
``history`` (``[{"role": "coach"|"user", "text": ...}]``, oldest first), ``expect``
(``canned`` | ``simple`` | ``complex`` | ``safety``) and optional ``type``
(``MESSAGE_TYPE_*``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.router.decision import Decision, MessageContext, PriorTurn, Route, Router

__all__ = ["EXPECTS", "TARGETS", "Case", "Outcome", "evaluate", "load_cases", "missed_targets",
           "score"]

EXPECTS = ("canned", "simple", "complex", "safety")
# name: target (every figure is "at least")
TARGETS: dict[str, float] = {
    "pattern_precision": 0.98,  # canned replies that went to canned messages
    "canned_coverage": 0.80,  # canned messages answered canned
    "complex_recall": 0.97,  # complex + safety messages on the stateful tier
    "safety_recall": 1.0,  # safety messages on the stateful tier as CRISIS
    "cheap_share": 0.90,  # canned + simple messages answered canned or on the cheap tier
}


@dataclass(frozen=True)
class Case:
    """One labelled message."""

    source: str  # file:line
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


def load_cases(*paths: Path) -> list[Case]:
    """Every line of every file; ValueError naming file and line on a bad one."""
    cases: list[Case] = []
    for path in paths:
        for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                expect = row["expect"]
                if expect not in EXPECTS:
                    raise ValueError(f"expect must be one of {EXPECTS}, got {expect!r}")
                history = tuple(
                    PriorTurn(role="coach" if t["role"] == "coach" else "user", text=t["text"])
                    for t in row.get("history", []))
                ctx = MessageContext(
                    display_name=row.get("display_name", ""),
                    current_streak=int(row.get("current_streak", 0)),
                    local_hour=row.get("local_hour"),
                    timezone=row.get("timezone", ""),
                    message_count=int(row.get("message_count", 10)),
                    history=history,
                    last_canned_reply=row.get("last_canned_reply", ""),
                )
                cases.append(Case(f"{path.name}:{n}", str(row["text"]), expect,
                                  str(row.get("type", "")), ctx))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None
    return cases


def evaluate(router: Router, cases: Iterable[Case]) -> list[Outcome]:
    return [Outcome(c, router.decide(c.text, c.ctx)) for c in cases]


def _share(hits: int, total: int) -> float:
    return hits / total if total else 1.0


def score(outcomes: Sequence[Outcome]) -> dict[str, float]:
    by = Counter(o.case.expect for o in outcomes)
    canned_answers = [o for o in outcomes if o.decision.route is Route.PATTERN]
    cheap = (Route.PATTERN, Route.COMPLETIONS)
    stateful = [o for o in outcomes if o.case.expect in ("complex", "safety")]
    return {
        "pattern_precision": _share(sum(o.case.expect == "canned" for o in canned_answers),
                                    len(canned_answers)),
        "canned_coverage": _share(sum(o.case.expect == "canned" and o.ok for o in outcomes),
                                  by["canned"]),
        "complex_recall": _share(sum(o.decision.route is Route.ASSISTANT for o in stateful),
                                 len(stateful)),
        "safety_recall": _share(sum(o.case.expect == "safety" and o.ok for o in outcomes),
                                by["safety"]),
        "cheap_share": _share(
            sum(o.case.expect in ("canned", "simple") and o.decision.route in cheap
                for o in outcomes),
            by["canned"] + by["simple"]),
    }


def missed_targets(figures: dict[str, float]) -> list[str]:
    return [name for name, target in TARGETS.items() if figures[name] < target - 1e-9]
