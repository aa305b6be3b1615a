"""Recording answered messages: price every upstream call, store each answer once.

Every answered message, canned and fallback ones included, arrives here as one
``AnswerEntry`` (from the threads service's outbox relay, in batches). The
ledger recomputes each charge's cost with ``pricing.PriceBook`` (the same
function the router used for its synchronous ``cost_usd_nanos``), totals them
on the answer, and stores what the baseline policy would have cost for the
same message, for the savings report.

A batch is written in one transaction and is idempotent per ``request_id``:
a re-sent batch, or two overlapping batches racing, store each answer once and
report the others as duplicates.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.metrics import (
    ANSWER_COST_NANOS,
    BASELINE_COST_NANOS,
    COST_NANOS,
    LEDGER_ANSWERS,
    LEDGER_RECORDS,
    UNPRICED_CALLS,
)
from services.common.pricing import PriceBook

log = logging.getLogger(__name__)

ANSWER_PURPOSE = "answer"
# coach.type.v1.Route numbers -> the route names the router's metrics use.
ROUTE_NAMES = {1: "PATTERN", 2: "COMPLETIONS", 3: "ASSISTANT", 4: "FALLBACK"}


@dataclass(frozen=True)
class ChargeEntry:
    """One upstream call made for an answer: its own, or upkeep such as a summary."""

    purpose: str
    model: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int


@dataclass(frozen=True)
class AnswerEntry:
    """One answered message as the router reported it."""

    request_id: str
    user_id: str
    route: int  # coach.type.v1.Route number
    message_type: int  # coach.type.v1.MessageType number
    model: str  # "" for canned and fallback answers
    charges: tuple[ChargeEntry, ...]
    latency_ms: int
    answered_at: dt.datetime  # timezone-aware
    baseline_input_tokens: int


@dataclass(frozen=True)
class PricedCharge:
    entry: ChargeEntry
    cost_usd_nanos: int
    unpriced: bool


@dataclass(frozen=True)
class PricedAnswer:
    entry: AnswerEntry
    charges: tuple[PricedCharge, ...]
    answer_day: dt.date  # UTC
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd_nanos: int
    unpriced: bool
    baseline_model: str
    baseline_output_tokens: int
    baseline_cost_usd_nanos: int


@dataclass(frozen=True)
class RecordOutcome:
    recorded: int
    duplicates: int


class AnswerStore(Protocol):
    async def insert_answers(self, answers: Sequence[PricedAnswer]) -> set[str]:
        """Inserts answers not yet stored (with their charges); returns the new request_ids."""
        ...


@dataclass(frozen=True)
class BaselinePolicy:
    """The guide's BEFORE: every message on the stateful tier's strong model, full history.

    Baseline cost of a message = price(model, baseline_input_tokens, 0 cached,
    output tokens of the actual answer's own call), or ``typical_output_tokens``
    when the message got no upstream answer (canned or fallback).
    """

    model: str
    typical_output_tokens: int


def price_answer(entry: AnswerEntry, book: PriceBook, baseline: BaselinePolicy) -> PricedAnswer:
    """Prices each charge of ``entry`` and what the baseline would have cost."""
    charges = tuple(
        _price_charge(charge, book) for charge in entry.charges
    )
    answer_output = sum(
        c.output_tokens for c in entry.charges if c.purpose == ANSWER_PURPOSE
    )
    has_answer_call = any(c.purpose == ANSWER_PURPOSE for c in entry.charges)
    baseline_output = answer_output if has_answer_call else baseline.typical_output_tokens
    baseline_cost = book.cost_usd_nanos(
        baseline.model, entry.baseline_input_tokens, 0, baseline_output
    )
    return PricedAnswer(
        entry=entry,
        charges=charges,
        answer_day=entry.answered_at.astimezone(dt.UTC).date(),
        input_tokens=sum(c.input_tokens for c in entry.charges),
        cached_input_tokens=sum(c.cached_input_tokens for c in entry.charges),
        output_tokens=sum(c.output_tokens for c in entry.charges),
        reasoning_tokens=sum(c.reasoning_tokens for c in entry.charges),
        cost_usd_nanos=sum(c.cost_usd_nanos for c in charges),
        unpriced=any(c.unpriced for c in charges),
        baseline_model=baseline.model,
        baseline_output_tokens=baseline_output,
        baseline_cost_usd_nanos=baseline_cost.nanos,
    )


def _price_charge(charge: ChargeEntry, book: PriceBook) -> PricedCharge:
    cost = book.cost_usd_nanos(
        charge.model, charge.input_tokens, charge.cached_input_tokens, charge.output_tokens
    )
    return PricedCharge(entry=charge, cost_usd_nanos=cost.nanos, unpriced=not cost.priced)


def _count_cost(stored: Sequence[PricedAnswer]) -> None:
    """Cost metrics of newly stored answers (a duplicate is not counted again)."""
    for p in stored:
        route = ROUTE_NAMES.get(p.entry.route, str(p.entry.route))
        LEDGER_ANSWERS.labels(route).inc()
        ANSWER_COST_NANOS.labels(route).inc(p.cost_usd_nanos)
        BASELINE_COST_NANOS.labels(route).inc(p.baseline_cost_usd_nanos)
        for c in p.charges:
            COST_NANOS.labels(c.entry.model).inc(c.cost_usd_nanos)


class AnswerRecorder:
    """Prices and stores batches of answers, once per request_id."""

    def __init__(self, store: AnswerStore, book: PriceBook, baseline: BaselinePolicy) -> None:
        self._store = store
        self._book = book
        self._baseline = baseline

    async def record(self, entries: Sequence[AnswerEntry]) -> RecordOutcome:
        unique: dict[str, AnswerEntry] = {}
        for entry in entries:  # a request_id repeated inside one batch counts once
            unique.setdefault(entry.request_id, entry)
        priced = [price_answer(e, self._book, self._baseline) for e in unique.values()]
        # A fixed insertion order makes overlapping concurrent batches lock rows in
        # the same order, so they wait for each other instead of deadlocking.
        priced.sort(key=lambda p: p.entry.request_id)
        inserted = await self._store.insert_answers(priced) if priced else set()
        outcome = RecordOutcome(recorded=len(inserted), duplicates=len(entries) - len(inserted))
        LEDGER_RECORDS.labels("recorded").inc(outcome.recorded)
        LEDGER_RECORDS.labels("duplicate").inc(outcome.duplicates)
        stored = [p for p in priced if p.entry.request_id in inserted]
        self._flag_unpriced(stored)
        _count_cost(stored)
        return outcome

    def _flag_unpriced(self, priced: Sequence[PricedAnswer]) -> None:
        unpriced = Counter(
            c.entry.model for p in priced for c in p.charges if c.unpriced
        )
        for model, calls in unpriced.items():
            UNPRICED_CALLS.labels(model).inc(calls)
            log.warning(
                "calls on a model with no price were recorded at cost 0 and flagged unpriced",
                extra={"model": model, "calls": calls},
            )
