"""All of the ledger's SQL (PostgreSQL through asyncpg)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from services.common.db import apply_migrations
from services.ledger.accounting import PricedAnswer
from services.ledger.limits import UserDay
from services.ledger.reports import CostRow, DailyRow, SavingsTotals

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
_DEADLOCK_RETRIES = 3

# One statement per batch: the answers not stored yet, then their charges.
# Each array is one column of the batch (rows in request_id order, so that
# overlapping concurrent batches take row locks in the same order).
_INSERT_BATCH = """
WITH new_answers AS (
    INSERT INTO answers (
        request_id, user_id, route, message_type, model, latency_ms, answered_at, answer_day,
        input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_usd_nanos,
        unpriced, baseline_input_tokens, baseline_output_tokens, baseline_model,
        baseline_cost_usd_nanos, cache_write_tokens, truncated)
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::smallint[], $4::smallint[], $5::text[], $6::bigint[],
        $7::timestamptz[], $8::date[], $9::bigint[], $10::bigint[], $11::bigint[],
        $12::bigint[], $13::bigint[], $14::boolean[], $15::bigint[], $16::bigint[],
        $17::text[], $18::bigint[], $31::bigint[], $32::boolean[])
    ORDER BY 1
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
), new_charges AS (
    INSERT INTO charges (
        request_id, seq, purpose, model, input_tokens, cached_input_tokens, output_tokens,
        reasoning_tokens, cost_usd_nanos, unpriced, route, answer_day, cache_write_tokens,
        service_tier, truncated)
    SELECT c.* FROM unnest(
        $19::text[], $20::smallint[], $21::text[], $22::text[], $23::bigint[], $24::bigint[],
        $25::bigint[], $26::bigint[], $27::bigint[], $28::boolean[], $29::smallint[],
        $30::date[], $33::bigint[], $34::text[], $35::boolean[])
        AS c(request_id, seq, purpose, model, input_tokens, cached_input_tokens,
             output_tokens, reasoning_tokens, cost_usd_nanos, unpriced, route, answer_day,
             cache_write_tokens, service_tier, truncated)
    WHERE c.request_id IN (SELECT request_id FROM new_answers)
    RETURNING 1
)
SELECT (SELECT array_agg(request_id) FROM new_answers) AS inserted,
       (SELECT count(*) FROM new_charges) AS charges
"""

_COST_ROWS = """
WITH calls AS (
    SELECT route, model, count(*) AS calls
    FROM answers WHERE answer_day BETWEEN $1 AND $2
    GROUP BY route, model
), spend AS (
    SELECT route, model,
           sum(input_tokens) AS input_tokens, sum(cached_input_tokens) AS cached_input_tokens,
           sum(output_tokens) AS output_tokens, sum(cost_usd_nanos) AS cost_usd_nanos
    FROM charges WHERE answer_day BETWEEN $1 AND $2
    GROUP BY route, model
)
SELECT route, model,
       coalesce(calls, 0)::bigint AS calls,
       coalesce(input_tokens, 0)::bigint AS input_tokens,
       coalesce(cached_input_tokens, 0)::bigint AS cached_input_tokens,
       coalesce(output_tokens, 0)::bigint AS output_tokens,
       coalesce(cost_usd_nanos, 0)::bigint AS cost_usd_nanos
FROM calls FULL JOIN spend USING (route, model)
ORDER BY route, model
"""

_DAILY_SUMS = """
    count(*)::bigint AS calls,
    sum(input_tokens)::bigint AS input_tokens,
    sum(cached_input_tokens)::bigint AS cached_input_tokens,
    sum(output_tokens)::bigint AS output_tokens,
    sum(cost_usd_nanos)::bigint AS cost_usd_nanos
"""

# Calls, tokens and cost per UTC day and route (or user), paged by keyset on
# (answer_day, key).
_DAILY_BY_ROUTE = f"""
SELECT answer_day, route::text AS key, {_DAILY_SUMS}
FROM answers
WHERE answer_day BETWEEN $1 AND $2 AND (answer_day, route) > ($3::date, $4::smallint)
GROUP BY answer_day, route
ORDER BY answer_day, route
LIMIT $5
"""

_DAILY_BY_USER = f"""
SELECT answer_day, user_id AS key, {_DAILY_SUMS}
FROM answers
WHERE answer_day BETWEEN $1 AND $2 AND (answer_day, user_id) > ($3::date, $4::text)
GROUP BY answer_day, user_id
ORDER BY answer_day, user_id
LIMIT $5
"""

_SAVINGS = """
SELECT count(*)::bigint AS calls,
       coalesce(sum(cost_usd_nanos), 0)::bigint AS actual,
       coalesce(sum(baseline_cost_usd_nanos), 0)::bigint AS baseline,
       coalesce(array_agg(DISTINCT baseline_model ORDER BY baseline_model)
                FILTER (WHERE baseline_model <> ''), '{}') AS models
FROM answers WHERE answer_day BETWEEN $1 AND $2
"""

_USER_DAY = """
SELECT count(*)::bigint AS messages, coalesce(sum(cost_usd_nanos), 0)::bigint AS spend
FROM answers WHERE user_id = $1 AND answer_day = $2
"""


class LedgerRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def migrate(self) -> list[int]:
        return await apply_migrations(self._pool, "ledger", MIGRATIONS)

    async def insert_answers(self, answers: Sequence[PricedAnswer]) -> set[str]:
        """Stores the answers (and their charges) not stored yet, in one transaction."""
        args = _batch_columns(answers)
        for attempt in range(1, _DEADLOCK_RETRIES + 1):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    row = await conn.fetchrow(_INSERT_BATCH, *args)
                assert row is not None
                return set(row["inserted"] or ())
            except asyncpg.DeadlockDetectedError:
                if attempt == _DEADLOCK_RETRIES:
                    raise
                log.warning("deadlock while recording a batch; retrying",
                            extra={"attempt": attempt, "records": len(answers)})
                await asyncio.sleep(0.01 * attempt)
        raise AssertionError("unreachable")

    async def cost_rows(self, start: dt.date, end: dt.date) -> list[CostRow]:
        rows = await self._pool.fetch(_COST_ROWS, start, end)
        return [CostRow(**dict(r)) for r in rows]

    async def daily_rows(
        self, by_user: bool, start: dt.date, end: dt.date,
        after: tuple[dt.date, str] | None, limit: int,
    ) -> list[DailyRow]:
        if by_user:
            position: tuple[dt.date, object] = after or (start - dt.timedelta(days=1), "")
            rows = await self._pool.fetch(_DAILY_BY_USER, start, end, *position, limit)
        else:
            day, key = after or (start - dt.timedelta(days=1), "-1")
            rows = await self._pool.fetch(_DAILY_BY_ROUTE, start, end, day, int(key), limit)
        return [
            DailyRow(day=r["answer_day"], key=r["key"], calls=r["calls"],
                     input_tokens=r["input_tokens"], cached_input_tokens=r["cached_input_tokens"],
                     output_tokens=r["output_tokens"], cost_usd_nanos=r["cost_usd_nanos"])
            for r in rows
        ]

    async def savings_totals(self, start: dt.date, end: dt.date) -> SavingsTotals:
        r = await self._pool.fetchrow(_SAVINGS, start, end)
        assert r is not None
        return SavingsTotals(calls=r["calls"], actual_cost_usd_nanos=r["actual"],
                             baseline_cost_usd_nanos=r["baseline"],
                             baseline_models=list(r["models"]))

    async def user_day(self, user_id: str, day: dt.date) -> UserDay:
        r = await self._pool.fetchrow(_USER_DAY, user_id, day)
        assert r is not None
        return UserDay(messages=r["messages"], spend_usd_nanos=r["spend"])


def _batch_columns(answers: Sequence[PricedAnswer]) -> list[list[object]]:
    """The batch as column arrays for unnest(): 18 answer columns, 12 charge columns, then the
    columns added later (2 answer columns, 3 charge columns: $31..$35)."""
    a_cols: list[list[object]] = [[] for _ in range(18)]
    c_cols: list[list[object]] = [[] for _ in range(12)]
    a_more: list[list[object]] = [[] for _ in range(2)]
    c_more: list[list[object]] = [[] for _ in range(3)]
    for p in answers:
        e = p.record
        for col, value in zip(a_cols, (
            e.request_id, e.user_id, e.route.value,
            e.message_type.value if e.message_type is not None else 0, e.model, e.latency_ms,
            e.answer_time, p.answer_day, p.input_tokens, p.cached_input_tokens, p.output_tokens,
            p.reasoning_tokens, p.cost_usd_nanos, p.unpriced, e.baseline_input_tokens,
            p.baseline_output_tokens, p.baseline_model, p.baseline_cost_usd_nanos,
        ), strict=True):
            col.append(value)
        a_more[0].append(p.cache_write_tokens)
        a_more[1].append(p.truncated)
        for seq, c in enumerate(p.charges):
            for col, value in zip(c_cols, (
                e.request_id, seq, c.charge.purpose, c.charge.model, c.charge.usage.input_tokens,
                c.charge.usage.cached_input_tokens, c.charge.usage.output_tokens,
                c.charge.usage.reasoning_tokens, c.cost_usd_nanos, c.unpriced, e.route.value,
                p.answer_day,
            ), strict=True):
                col.append(value)
            c_more[0].append(c.charge.usage.cache_write_tokens)
            c_more[1].append(c.charge.usage.service_tier)
            c_more[2].append(c.charge.usage.truncated)
    return [*a_cols, *c_cols, *a_more, *c_more]
