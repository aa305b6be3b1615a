"""Recording answered messages: price every upstream call, store each answer once.

Every answered message, canned and fallback ones included, arrives here as one
``AnswerRecord`` (from the threads service's outbox relay, in batches). The
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

from services.common.exchange import AnswerRecord
from services.common.metrics import (
    ANSWER_COST_NANOS,
    BASELINE_COST_NANOS,
    COST_NANOS,
    LEDGER_ANSWERS,
    LEDGER_RECORDS,
    TRUNCATED_ANSWERS,
    UNPRICED_CALLS,
)
from services.common.pricing import PriceBook
from services.common.usage import ANSWER_PURPOSE, Charge

log = logging.getLogger(__name__)




@dataclass(frozen=True)
class PricedCharge:
    charge: Charge
    cost_usd_nanos: int
    unpriced: bool


@dataclass(frozen=True)
class PricedAnswer:
    record: AnswerRecord
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
    cache_write_tokens: int = 0
    # The answer's own call was cut off by max_output_tokens: a quality failure.
    truncated: bool = False


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
    """The baseline policy: every message on the stateful tier's strong model, full history.

    Baseline cost of a message = price(model, baseline_input_tokens, 0 cached,
    output tokens of the actual answer's own call), or ``typical_output_tokens``
    when the message got no upstream answer (canned or fallback).
    """

    model: str
    typical_output_tokens: int


def price_answer(record: AnswerRecord, book: PriceBook, baseline: BaselinePolicy) -> PricedAnswer:
    """Prices each charge of ``record`` and what the baseline would have cost."""
    charges = tuple(
        _price_charge(charge, book) for charge in record.charges
    )
    answer_output = sum(
        c.usage.output_tokens for c in record.charges if c.purpose == ANSWER_PURPOSE
    )
    has_answer_call = any(c.purpose == ANSWER_PURPOSE for c in record.charges)
    baseline_output = answer_output if has_answer_call else baseline.typical_output_tokens
    baseline_cost = book.cost_usd_nanos(
        baseline.model, record.baseline_input_tokens, 0, baseline_output
    )
    return PricedAnswer(
        record=record,
        charges=charges,
        answer_day=record.answer_time.astimezone(dt.UTC).date(),
        input_tokens=sum(c.usage.input_tokens for c in record.charges),
        cached_input_tokens=sum(c.usage.cached_input_tokens for c in record.charges),
        output_tokens=sum(c.usage.output_tokens for c in record.charges),
        reasoning_tokens=sum(c.usage.reasoning_tokens for c in record.charges),
        cache_write_tokens=sum(c.usage.cache_write_tokens for c in record.charges),
        truncated=any(c.usage.truncated for c in record.charges if c.purpose == ANSWER_PURPOSE),
        cost_usd_nanos=sum(c.cost_usd_nanos for c in charges),
        unpriced=any(c.unpriced for c in charges),
        baseline_model=baseline.model,
        baseline_output_tokens=baseline_output,
        baseline_cost_usd_nanos=baseline_cost.nanos,
    )


def _price_charge(charge: Charge, book: PriceBook) -> PricedCharge:
    cost = book.cost_of(charge.model, charge.usage)
    return PricedCharge(charge=charge, cost_usd_nanos=cost.nanos, unpriced=not cost.priced)


def _count_cost(stored: Sequence[PricedAnswer]) -> None:
    """Cost metrics of newly stored answers (a duplicate is not counted again)."""
    for p in stored:
        route = p.record.route.name  # as the router's coach_routes_total names it
        LEDGER_ANSWERS.labels(route).inc()
        ANSWER_COST_NANOS.labels(route).inc(p.cost_usd_nanos)
        BASELINE_COST_NANOS.labels(route).inc(p.baseline_cost_usd_nanos)
        if p.truncated:
            TRUNCATED_ANSWERS.labels(route).inc()
        for c in p.charges:
            COST_NANOS.labels(c.charge.model).inc(c.cost_usd_nanos)


class AnswerRecorder:
    """Prices and stores batches of answers, once per request_id."""

    def __init__(self, store: AnswerStore, book: PriceBook, baseline: BaselinePolicy) -> None:
        self._store = store
        self._book = book
        self._baseline = baseline

    async def record(self, entries: Sequence[AnswerRecord]) -> RecordOutcome:
        unique: dict[str, AnswerRecord] = {}
        for entry in entries:  # a request_id repeated inside one batch counts once
            unique.setdefault(entry.request_id, entry)
        priced = [price_answer(e, self._book, self._baseline) for e in unique.values()]
        # A fixed insertion order makes overlapping concurrent batches lock rows in
        # the same order, so they wait for each other instead of deadlocking.
        priced.sort(key=lambda p: p.record.request_id)
        inserted = await self._store.insert_answers(priced) if priced else set()
        outcome = RecordOutcome(recorded=len(inserted), duplicates=len(entries) - len(inserted))
        LEDGER_RECORDS.labels("recorded").inc(outcome.recorded)
        LEDGER_RECORDS.labels("duplicate").inc(outcome.duplicates)
        stored = [p for p in priced if p.record.request_id in inserted]
        self._flag_unpriced(stored)
        _count_cost(stored)
        return outcome

    def _flag_unpriced(self, priced: Sequence[PricedAnswer]) -> None:
        unpriced = Counter(
            c.charge.model for p in priced for c in p.charges if c.unpriced
        )
        for model, calls in unpriced.items():
            UNPRICED_CALLS.labels(model).inc(calls)
            log.warning(
                "calls on a model with no price were recorded at cost 0 and flagged unpriced",
                extra={"model": model, "calls": calls},
            )
