"""`coach estimate`: expected monthly cost of an app's own message log, with no upstream call.

Each row of the exported log (JSON Lines: ``user_id``, ``message``, ``ts`` as ISO 8601 or
epoch seconds, optional ``local_hour``) goes through the router's own decision (in
process: the same classifier, canned sets and tiers as the running router) and a token
model, priced with the price book, under both policies and three cache regimes:

* tokens: the persona and tool definitions as the llm sends them; the user's message;
  a reply of a typical length for its verbosity (``REPLY_TOKENS``); the stateful tier's
  context (the optimized policy: summary plus the last ``KEEP`` messages; the baseline:
  the whole history); the cheap tier's last six turns.
* cache regimes: ``none`` (nothing cached); ``in_memory`` and ``24h``: a call's prompt
  reads from the cache the part it shares with the same user's previous call on the
  same model (at least 1,024 tokens, in 128-token steps) when that call was less than
  10 minutes / 24 hours ago.
* monthly: the log's cost scaled to 30 days of its own time span.

It is an estimate: replies are typical lengths, not the model's, and the coach's turns
are not known (so a reply to the coach's question is classified on its own).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.common.pricing import PriceBook
from services.common.tokens import count_tokens
from services.common.vocabulary import Route

REPLY_TOKENS = {"low": 35, "medium": 95}
LOW_TYPES = {"GREETING", "ACKNOWLEDGEMENT", "CHECK_IN", "CELEBRATION", "STRUGGLING",
             "ACCOUNTABILITY"}
KEEP = 20
SUMMARY_TOKENS = 150
CONTEXT_LINE_TOKENS = 20
CHEAP_HISTORY = 6
MIN_CACHED = 1024
STEP = 128
REGIMES = {"none": 0.0, "in_memory": 600.0, "24h": 86_400.0}
POLICIES = ("baseline", "optimized")
MONTH_S = 30 * 86_400


@dataclass(frozen=True)
class LogRow:
    line: int
    user_id: str
    message: str
    at: float  # epoch seconds
    local_hour: int | None


@dataclass
class Estimate:
    rows: int = 0
    span_s: float = 0.0
    routes: Counter[str] = field(default_factory=Counter)
    # (policy, regime) -> nanos over the log
    nanos: dict[tuple[str, str], int] = field(default_factory=dict)

    def monthly_usd(self, policy: str, regime: str) -> float:
        scale = MONTH_S / self.span_s if self.span_s > 0 else 1.0
        return self.nanos.get((policy, regime), 0) / 1e9 * scale


def parse_log(lines: Iterable[str]) -> tuple[list[LogRow], list[str]]:
    """The rows that parse, and one error per bad row: "line N: reason"."""
    rows: list[LogRow] = []
    errors: list[str] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not JSON ({exc.msg})")
            continue
        if not isinstance(data, dict):
            errors.append(f"line {number}: expected an object with user_id, message, ts")
            continue
        user_id, message, ts = data.get("user_id"), data.get("message"), data.get("ts")
        if not isinstance(user_id, str) or not user_id.strip():
            errors.append(f"line {number}: user_id must be a non-empty string")
            continue
        if not isinstance(message, str) or not message.strip():
            errors.append(f"line {number}: message must be a non-empty string")
            continue
        at = _timestamp(ts)
        if at is None:
            errors.append(f"line {number}: ts must be ISO 8601 or epoch seconds, not {ts!r}")
            continue
        hour = data.get("local_hour")
        if hour is not None and (not isinstance(hour, int) or not 0 <= hour <= 23):
            errors.append(f"line {number}: local_hour must be an integer 0-23")
            continue
        rows.append(LogRow(number, user_id, message, at, hour))
    return rows, errors


def _timestamp(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.timestamp()
    return None


@dataclass
class _Cache:
    """Per user and model: the last prompt's length and when it was sent."""

    last: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)

    def cached(self, user: str, model: str, prompt: int, shared: int, at: float,
               ttl: float) -> int:
        previous = self.last.get((user, model))
        self.last[(user, model)] = (prompt, at)
        if not ttl or previous is None or at - previous[1] > ttl:
            return 0
        common = min(shared, previous[0])
        return 0 if common < MIN_CACHED else MIN_CACHED + (common - MIN_CACHED) // STEP * STEP


def estimate(rows: list[LogRow], decide: Any, book: PriceBook, *, prefix_tokens: int,
             persona_tokens: int, strong_model: str) -> Estimate:
    """Prices every row under both policies and every regime. ``decide(message, count,
    local_hour)`` is the router's decision for the user's message number ``count``."""
    result = Estimate(rows=len(rows))
    if not rows:
        return result
    ordered = sorted(rows, key=lambda r: (r.at, r.line))
    result.span_s = max(ordered[-1].at - ordered[0].at, 86_400.0)
    history: dict[str, list[int]] = defaultdict(list)  # tokens of each message and reply
    caches = {(p, r): _Cache() for p in POLICIES for r in REGIMES}
    totals = {(p, r): 0 for p in POLICIES for r in REGIMES}
    for row in ordered:
        past = history[row.user_id]
        count = len(past) // 2
        decision = decide(row.message, count, row.local_hour)
        route = decision.route
        result.routes[route.name] += 1
        message = count_tokens(row.message)
        mtype = decision.message_type.name
        reply = REPLY_TOKENS["low" if mtype in LOW_TYPES else "medium"]
        # The baseline: strong model, every tool, the whole history, default verbosity.
        base_prompt = prefix_tokens + sum(past) + message
        calls: dict[str, list[tuple[str, int, int, int]]] = {
            "baseline": [(strong_model, base_prompt, base_prompt - message,
                          REPLY_TOKENS["medium"])],
            "optimized": [],
        }
        if route is Route.COMPLETIONS:
            prompt = persona_tokens + CONTEXT_LINE_TOKENS + sum(past[-CHEAP_HISTORY:]) + message
            calls["optimized"].append((decision.model, prompt, persona_tokens, reply))
        elif route is Route.ASSISTANT:
            window = sum(past[-KEEP:])
            prompt = persona_tokens + (SUMMARY_TOKENS if len(past) > KEEP else 0) + window
            prompt += message
            calls["optimized"].append((decision.model, prompt, prompt - message, reply))
        for policy, policy_calls in calls.items():
            for regime, ttl in REGIMES.items():
                for model, prompt, shared, out in policy_calls:
                    cached = caches[(policy, regime)].cached(
                        row.user_id, model, prompt, shared, row.at, ttl)
                    totals[(policy, regime)] += book.cost_usd_nanos(
                        model, prompt, cached, out).nanos
        past += [message, reply if route is not Route.PATTERN else 12]
    result.nanos = totals
    return result


def render(result: Estimate, errors: list[str]) -> str:
    """The route mix, the monthly cost table and a bar chart, as text."""
    lines = [f"{result.rows:,} messages over {result.span_s / 86_400:.1f} days, scaled to 30 days"]
    if errors:
        lines.append(f"{len(errors):,} bad row(s) skipped (first: {errors[0]})")
    total = sum(result.routes.values()) or 1
    mix = ", ".join(f"{name.lower()} {100 * n / total:.0f}%"
                    for name, n in result.routes.most_common())
    lines += [f"route mix (optimized): {mix}", "",
              "| cache regime | baseline $/month | optimized $/month | optimized / baseline |",
              "|---|---:|---:|---:|"]
    top = max((result.monthly_usd(p, r) for p in POLICIES for r in REGIMES), default=0.0) or 1.0
    chart = []
    for regime in REGIMES:
        base = result.monthly_usd("baseline", regime)
        opt = result.monthly_usd("optimized", regime)
        ratio = f"{opt / base:.1%}" if base else "—"
        lines.append(f"| {regime} | {base:,.2f} | {opt:,.2f} | {ratio} |")
        for policy, value in (("baseline", base), ("optimized", opt)):
            bar = "#" * max(1 if value else 0, round(40 * value / top))
            chart.append(f"{regime:>9} {policy:<9} {bar} ${value:,.2f}")
    return "\n".join([*lines, "", *chart]) + "\n"
