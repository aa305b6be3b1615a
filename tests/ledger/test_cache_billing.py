"""The ledger bills what caching and service tiers really cost, and counts cut-off replies."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from coach.ledger.v1 import ledger_service_pb2 as pb
from coach.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2 as t

from services.common.metrics import TRUNCATED_ANSWERS
from services.common.pricing import PriceBook
from tests.ledger.records import answer, at, record

BOOK = PriceBook.load()
DAY = "2023-02-10"  # a day no other ledger test reports on


def usage_charge(model: str, inp: int, cached: int, out: int, *, written: int = 0,
                 tier: str = "", truncated: bool = False, purpose: str = "answer") -> t.Charge:
    return t.Charge(model=model, purpose=purpose, usage=t.Usage(
        input_tokens=inp, cached_input_tokens=cached, output_tokens=out,
        cache_write_tokens=written, service_tier=tier, truncated=truncated))


async def test_cache_writes_and_the_reported_tier_are_billed_and_stored(
    stub: pb_grpc.LedgerServiceStub, pg_url: str
) -> None:
    # The answer on gpt-5.6-sol wrote 1,200 tokens to the cache (1.25x input) and read 1,024
    # (0.1x); its summary ran on flex (half price), as the response reported.
    answer_call = usage_charge("gpt-5.6-sol", 3000, 1024, 200, written=1200, truncated=True)
    summary = usage_charge("gpt-5.4-mini", 2000, 0, 150, tier="flex", purpose="summary")
    rec = answer(at(DAY), t.ROUTE_ASSISTANT, "gpt-5.6-sol", [answer_call, summary])
    cut_before = TRUNCATED_ANSWERS.labels("ASSISTANT")._value.get()
    assert (await record(stub, [rec])).recorded == 1
    assert TRUNCATED_ANSWERS.labels("ASSISTANT")._value.get() == cut_before + 1

    expected_answer = 776 * 5_000 + 1024 * 500 + 1200 * 6_250 + 200 * 30_000
    expected_summary = (2000 * 750 + 150 * 4_500) // 2
    report = await stub.GetCostReport(pb.GetCostReportRequest(start_date=DAY, end_date=DAY))
    assert report.total_cost_usd_nanos == expected_answer + expected_summary == 18_979_500
    conn = await asyncpg.connect(pg_url)
    try:
        row = await conn.fetchrow(
            "SELECT cache_write_tokens, truncated, cost_usd_nanos FROM answers "
            "WHERE request_id = $1", rec.request_id)
        charges = await conn.fetch(
            "SELECT purpose, cache_write_tokens, service_tier, truncated, cost_usd_nanos "
            "FROM charges WHERE request_id = $1 ORDER BY seq", rec.request_id)
    finally:
        await conn.close()
    assert row is not None
    assert (row["cache_write_tokens"], row["truncated"]) == (1200, True)
    assert [tuple(c) for c in charges] == [
        ("answer", 1200, "", True, expected_answer),
        ("summary", 0, "flex", False, expected_summary),
    ]


async def test_more_cache_reads_and_writes_than_input_is_refused(
    stub: pb_grpc.LedgerServiceStub,
) -> None:
    bad = answer(at(DAY), t.ROUTE_COMPLETIONS, "gpt-5.6-luna",
                 [usage_charge("gpt-5.6-luna", 100, 60, 5, written=60)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(stub, [bad])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
