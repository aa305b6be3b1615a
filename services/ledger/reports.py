"""Spend reports: by route and model, per day, and savings against the baseline.

Dates are UTC calendar days written ``YYYY-MM-DD``; a range is inclusive.
Both dates empty means today (UTC); only ``start_date`` means from that day
through today; ``end_date`` alone, a malformed date, or a start after the end
is INVALID_ARGUMENT with a BadRequest violation naming the field.

Every answered message, canned and fallback ones included, is one call on the
row of its route and model. Upkeep calls (a summary written while pruning)
add their tokens and cost to the row of (the answer's route, the upkeep
call's model) but no calls, so ``total_calls`` counts answers and the totals
are the whole bill.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.common.errors import Validator

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class DateRange:
    start: dt.date
    end: dt.date


def parse_date_range(start_date: str, end_date: str, today: dt.date) -> DateRange:
    """The inclusive UTC range a report request names (see the module docstring)."""
    v = Validator()
    start = _parse_date(start_date, "start_date", v)
    end = _parse_date(end_date, "end_date", v)
    if not start_date and end_date:
        v.add("start_date", "required when end_date is set")
    v.raise_if_any("INVALID_DATE_RANGE")
    if start is None:
        start = end = today
    elif end is None:
        end = today
    if start > end:
        v.add("start_date", f"{start.isoformat()} is after end_date {end.isoformat()}")
        v.raise_if_any("INVALID_DATE_RANGE")
    return DateRange(start, end)


def _parse_date(text: str, field_name: str, v: Validator) -> dt.date | None:
    if not text:
        return None
    if not _DATE.match(text):
        v.add(field_name, f"{text!r} is not a date YYYY-MM-DD")
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        v.add(field_name, f"{text!r} is not a valid calendar date")
        return None


# ---- rows --------------------------------------------------------------------


@dataclass(frozen=True)
class CostRow:
    route: int
    model: str
    calls: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_usd_nanos: int


@dataclass(frozen=True)
class CostReport:
    rows: list[CostRow]
    total_calls: int
    total_cost_usd_nanos: int


@dataclass(frozen=True)
class DailyRow:
    day: dt.date
    key: str  # route number as text (by route) or user id (by user)
    calls: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_usd_nanos: int


@dataclass(frozen=True)
class DailyPage:
    rows: list[DailyRow]
    next_page_token: str


@dataclass(frozen=True)
class SavingsTotals:
    calls: int
    actual_cost_usd_nanos: int
    baseline_cost_usd_nanos: int
    baseline_models: list[str]


@dataclass(frozen=True)
class SavingsReport:
    calls: int
    actual_cost_usd_nanos: int
    baseline_cost_usd_nanos: int
    percent_saved: float
    baseline_model: str


class ReportStore(Protocol):
    async def cost_rows(self, start: dt.date, end: dt.date) -> list[CostRow]: ...

    async def daily_rows(
        self, by_user: bool, start: dt.date, end: dt.date,
        after: tuple[dt.date, str] | None, limit: int,
    ) -> list[DailyRow]: ...

    async def savings_totals(self, start: dt.date, end: dt.date) -> SavingsTotals: ...


# ---- paging (AIP-158) ----------------------------------------------------------


def page_size_of(requested: int) -> int:
    """AIP-158: 0 means the default (100); above the maximum (1000) is coerced down."""
    v = Validator()
    v.check(requested >= 0, "page_size", "must not be negative")
    v.raise_if_any("INVALID_PAGE_SIZE")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_page_token(query: dict[str, str], last: DailyRow) -> str:
    payload = {"q": query, "d": last.day.isoformat(), "k": last.key}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def decode_page_token(token: str, query: dict[str, str]) -> tuple[dt.date, str] | None:
    """The position after which the next page starts; the token must match the query."""
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        if payload["q"] != query:
            raise ValueError("query changed")
        return dt.date.fromisoformat(payload["d"]), str(payload["k"])
    except (ValueError, KeyError, TypeError, binascii.Error, json.JSONDecodeError):
        v = Validator()
        v.add("page_token", "not a token from a previous page of this same report request")
        v.raise_if_any("INVALID_PAGE_TOKEN")
        raise AssertionError("unreachable") from None


# ---- the reports -----------------------------------------------------------------


class SpendReports:
    """Builds the cost, daily and savings reports from stored answers."""

    def __init__(self, store: ReportStore, configured_baseline_model: str,
                 clock: Clock = utc_now) -> None:
        self._store = store
        self._baseline_model = configured_baseline_model
        self._clock = clock

    def date_range(self, start_date: str, end_date: str) -> DateRange:
        return parse_date_range(start_date, end_date, self._clock().date())

    async def cost_report(self, start_date: str, end_date: str) -> CostReport:
        days = self.date_range(start_date, end_date)
        rows = await self._store.cost_rows(days.start, days.end)
        return CostReport(
            rows=rows,
            total_calls=sum(r.calls for r in rows),
            total_cost_usd_nanos=sum(r.cost_usd_nanos for r in rows),
        )

    async def daily_report(
        self, start_date: str, end_date: str, by_user: bool, page_size: int, page_token: str
    ) -> DailyPage:
        days = self.date_range(start_date, end_date)
        size = page_size_of(page_size)
        query = {"s": days.start.isoformat(), "e": days.end.isoformat(),
                 "g": "user" if by_user else "route"}
        after = decode_page_token(page_token, query)
        rows = await self._store.daily_rows(by_user, days.start, days.end, after, size + 1)
        if len(rows) > size:
            rows = rows[:size]
            return DailyPage(rows, encode_page_token(query, rows[-1]))
        return DailyPage(rows, "")

    async def savings_report(self, start_date: str, end_date: str) -> SavingsReport:
        days = self.date_range(start_date, end_date)
        totals = await self._store.savings_totals(days.start, days.end)
        return SavingsReport(
            calls=totals.calls,
            actual_cost_usd_nanos=totals.actual_cost_usd_nanos,
            baseline_cost_usd_nanos=totals.baseline_cost_usd_nanos,
            percent_saved=percent_saved(totals.actual_cost_usd_nanos,
                                        totals.baseline_cost_usd_nanos),
            baseline_model="+".join(totals.baseline_models) or self._baseline_model,
        )


def percent_saved(actual_nanos: int, baseline_nanos: int) -> float:
    """100 * (baseline - actual) / baseline, rounded to 2 decimals; 0 with no baseline.

    Negative when the traffic cost more than the baseline would have.
    """
    if baseline_nanos <= 0:
        return 0.0
    return round(100.0 * (baseline_nanos - actual_nanos) / baseline_nanos, 2)
