"""LedgerService in-process on a real PostgreSQL: recording, reports, limits."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import grpc
import pytest
from coach.ledger.v1 import ledger_service_pb2 as pb
from coach.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2 as t
from google.rpc import error_details_pb2, status_pb2

from services.common.metrics import UNPRICED_CALLS
from services.common.pricing import PriceBook
from tests.ledger.records import answer, at, charge, record

BOOK = PriceBook.load()
Stub = pb_grpc.LedgerServiceStub


def price(model: str, inp: int, cached: int, out: int) -> int:
    return BOOK.cost_usd_nanos(model, inp, cached, out).nanos


def bad_fields(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    return {v.field: v.description for v in bad.field_violations}
    return {}


def rows_by_key(report: pb.GetCostReportResponse) -> dict[tuple[int, str], pb.CostReportRow]:
    return {(r.route, r.model): r for r in report.rows}


def a_day_of_march(stub: Stub) -> list[pb.AnswerRecord]:
    day = "2025-03-01"
    summary = charge("gpt-5.4-nano", 2400, 0, 150, purpose="summary")
    return [
        answer(at(day, 8), t.ROUTE_PATTERN, message_type=t.MESSAGE_TYPE_GREETING,
               baseline_input_tokens=900),
        answer(at(day, 9), t.ROUTE_PATTERN, message_type=t.MESSAGE_TYPE_ACKNOWLEDGEMENT),
        answer(at(day, 10), t.ROUTE_FALLBACK),
        answer(at(day, 11), t.ROUTE_COMPLETIONS, "gpt-5.4-mini",
               [charge("gpt-5.4-mini", 800, 0, 90)], baseline_input_tokens=2000),
        answer(at(day, 12), t.ROUTE_COMPLETIONS, "gpt-5.4-mini",
               [charge("gpt-5.4-mini", 1000, 400, 120, reasoning=40)]),
        answer(at(day, 13), t.ROUTE_COMPLETIONS, "gpt-5.4-mini-2026-03-17",
               [charge("gpt-5.4-mini-2026-03-17", 500, 0, 50)]),
        answer(at(day, 14), t.ROUTE_ASSISTANT, "gpt-5.5",
               [charge("gpt-5.5", 3200, 2048, 180)]),
        # the answer plus the summary written while pruning its conversation
        answer(at(day, 23, 59), t.ROUTE_ASSISTANT, "gpt-5.5",
               [charge("gpt-5.5", 4000, 1024, 200), summary]),
        # the next UTC day: not in the report
        answer(at("2025-03-02", 0, 0), t.ROUTE_ASSISTANT, "gpt-5.5",
               [charge("gpt-5.5", 1000, 0, 100)]),
    ]


async def test_cost_report_counts_every_answer_and_charges_upkeep_to_its_route(
    stub: Stub,
) -> None:
    records = a_day_of_march(stub)
    reply = await record(stub, records)
    assert (reply.recorded, reply.duplicates) == (9, 0)

    report = await stub.GetCostReport(pb.GetCostReportRequest(start_date="2025-03-01",
                                                              end_date="2025-03-01"))
    rows = rows_by_key(report)
    assert list(rows) == sorted(rows)  # ordered by route, then model
    assert rows[(t.ROUTE_PATTERN, "")].calls == 2
    assert rows[(t.ROUTE_PATTERN, "")].cost_usd_nanos == 0
    assert rows[(t.ROUTE_FALLBACK, "")].calls == 1
    mini = rows[(t.ROUTE_COMPLETIONS, "gpt-5.4-mini")]
    assert (mini.calls, mini.input_tokens, mini.cached_input_tokens, mini.output_tokens) == \
        (2, 1800, 400, 210)
    assert mini.cost_usd_nanos == price("gpt-5.4-mini", 800, 0, 90) + \
        price("gpt-5.4-mini", 1000, 400, 120)
    snapshot = rows[(t.ROUTE_COMPLETIONS, "gpt-5.4-mini-2026-03-17")]
    assert snapshot.cost_usd_nanos == price("gpt-5.4-mini", 500, 0, 50) > 0
    strong = rows[(t.ROUTE_ASSISTANT, "gpt-5.5")]
    assert (strong.calls, strong.input_tokens, strong.output_tokens) == (2, 7200, 380)
    upkeep = rows[(t.ROUTE_ASSISTANT, "gpt-5.4-nano")]
    assert (upkeep.calls, upkeep.input_tokens, upkeep.output_tokens) == (0, 2400, 150)
    assert upkeep.cost_usd_nanos == price("gpt-5.4-nano", 2400, 0, 150)

    assert report.total_calls == 8  # answers, canned and fallback included; no upkeep calls
    expected_bill = sum(price(c.model, c.usage.input_tokens, c.usage.cached_input_tokens,
                              c.usage.output_tokens)
                        for r in records[:8] for c in r.charges)
    assert report.total_cost_usd_nanos == expected_bill == sum(r.cost_usd_nanos
                                                               for r in report.rows)
    assert expected_bill == 36_868_500


async def test_the_same_batch_twice_is_recorded_once(stub: Stub) -> None:
    day = "2025-03-10"
    batch = [answer(at(day, 9, i), t.ROUTE_COMPLETIONS, "gpt-5.4-mini",
                    [charge("gpt-5.4-mini", 1000 + i, 100, 50)]) for i in range(20)]
    first = await record(stub, batch)
    again = await record(stub, batch)
    assert (first.recorded, first.duplicates) == (20, 0)
    assert (again.recorded, again.duplicates) == (0, 20)
    # a request_id repeated inside one batch counts once too
    repeated = await record(stub, [batch[0], batch[0]])
    assert (repeated.recorded, repeated.duplicates) == (0, 2)
    report = await stub.GetCostReport(pb.GetCostReportRequest(start_date=day, end_date=day))
    assert report.total_calls == 20
    assert report.total_cost_usd_nanos == sum(price("gpt-5.4-mini", 1000 + i, 100, 50)
                                              for i in range(20))


async def test_concurrent_overlapping_batches_store_no_duplicates(stub: Stub) -> None:
    day = "2025-03-11"
    records = [answer(at(day, i // 60 % 24, i % 60), t.ROUTE_ASSISTANT, "gpt-5.5",
                      [charge("gpt-5.5", 500 + i, i % 300, 40 + i % 7),
                       charge("gpt-5.4-nano", 100, 0, 10, purpose="summary")])
               for i in range(1000)]
    # ten batches of 300, each overlapping its neighbours, in shuffled order
    batches = [records[s:s + 300] for s in range(0, 1000, 100)]
    batches = [list(reversed(b)) if k % 2 else b for k, b in enumerate(batches)]
    replies = await asyncio.gather(*(record(stub, b) for b in batches))
    assert sum(r.recorded for r in replies) == 1000
    assert sum(r.duplicates for r in replies) == sum(len(b) for b in batches) - 1000
    report = await stub.GetCostReport(pb.GetCostReportRequest(start_date=day, end_date=day))
    assert report.total_calls == 1000
    expected = sum(price("gpt-5.5", 500 + i, i % 300, 40 + i % 7) + price("gpt-5.4-nano", 100, 0, 10)
                   for i in range(1000))
    assert report.total_cost_usd_nanos == expected
    nano = rows_by_key(report)[(t.ROUTE_ASSISTANT, "gpt-5.4-nano")]
    assert (nano.calls, nano.input_tokens) == (0, 100_000)


async def test_a_relay_batch_of_500_is_recorded_in_one_call(stub: Stub) -> None:
    day = "2025-03-12"
    batch = [answer(at(day, 10, i % 60), t.ROUTE_COMPLETIONS, "gpt-5.4-mini",
                    [charge("gpt-5.4-mini", 1200, 1024, 80),
                     charge("gpt-5.4-nano", 3000, 0, 200, purpose="summary")],
                    user_id=f"user-{i % 37}")
             for i in range(500)]
    reply = await record(stub, batch)
    assert (reply.recorded, reply.duplicates) == (500, 0)


async def test_a_bad_record_rejects_the_batch_and_stores_nothing(stub: Stub) -> None:
    day = "2025-03-13"
    good = answer(at(day), t.ROUTE_COMPLETIONS, "gpt-5.4-mini", [charge("gpt-5.4-mini", 10, 0, 5)])
    bad = answer(at(day), t.ROUTE_COMPLETIONS, "gpt-5.4-mini",
                 [charge("gpt-5.4-mini", 10, 20, 5)])
    no_route = answer(at(day), t.ROUTE_UNSPECIFIED)
    no_time = pb.AnswerRecord(request_id="x", user_id="u", route=t.ROUTE_PATTERN)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(stub, [good, bad, no_route, no_time])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = bad_fields(err.value)
    assert set(fields) == {"records[1].charges[0].usage.cached_input_tokens",
                           "records[2].route", "records[3].answer_time"}
    report = await stub.GetCostReport(pb.GetCostReportRequest(start_date=day, end_date=day))
    assert report.total_calls == 0


async def test_unpriced_model_is_recorded_at_zero_and_flagged(stub: Stub, pg_url: str) -> None:
    day = "2025-03-14"
    before = UNPRICED_CALLS.labels("gpt-mystery")._value.get()
    rec = answer(at(day), t.ROUTE_COMPLETIONS, "gpt-mystery", [charge("gpt-mystery", 100, 0, 10)])
    assert (await record(stub, [rec])).recorded == 1
    report = await stub.GetCostReport(pb.GetCostReportRequest(start_date=day, end_date=day))
    row = rows_by_key(report)[(t.ROUTE_COMPLETIONS, "gpt-mystery")]
    assert (row.calls, row.input_tokens, row.cost_usd_nanos) == (1, 100, 0)
    assert UNPRICED_CALLS.labels("gpt-mystery")._value.get() == before + 1
    conn = await asyncpg.connect(pg_url)
    try:
        flags = await conn.fetchrow(
            "SELECT a.unpriced, c.unpriced AS charge_unpriced FROM answers a "
            "JOIN charges c USING (request_id) WHERE request_id = $1", rec.request_id)
    finally:
        await conn.close()
    assert flags is not None and flags["unpriced"] and flags["charge_unpriced"]


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        ("2025-3-01", "", "start_date"),
        ("2025-02-30", "2025-03-01", "start_date"),
        ("2025-03-01", "yesterday", "end_date"),
        ("", "2025-03-01", "start_date"),
        ("2025-03-02", "2025-03-01", "start_date"),
        ("20250301", "", "start_date"),
    ],
)
async def test_bad_dates_are_invalid_argument_with_the_field(
    stub: Stub, start: str, end: str, field: str
) -> None:
    for call in (
        stub.GetCostReport(pb.GetCostReportRequest(start_date=start, end_date=end)),
        stub.GetSavingsReport(pb.GetSavingsReportRequest(start_date=start, end_date=end)),
        stub.GetDailyReport(pb.GetDailyReportRequest(start_date=start, end_date=end)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in bad_fields(err.value)


async def test_empty_dates_mean_today(stub: Stub) -> None:
    today = pb.GetCostReportRequest()
    before = await stub.GetCostReport(today)
    now = dt.datetime.now(dt.UTC)
    await record(stub, [answer(now, t.ROUTE_COMPLETIONS, "gpt-5.4-nano",
                               [charge("gpt-5.4-nano", 1000, 0, 100)]),
                        answer(now - dt.timedelta(days=1, hours=1), t.ROUTE_PATTERN)])
    after = await stub.GetCostReport(today)
    assert after.total_calls == before.total_calls + 1
    assert after.total_cost_usd_nanos == before.total_cost_usd_nanos + \
        price("gpt-5.4-nano", 1000, 0, 100)
    explicit = await stub.GetCostReport(pb.GetCostReportRequest(
        start_date=now.date().isoformat(), end_date=now.date().isoformat()))
    assert explicit == after


async def test_daily_report_by_user_and_route_pages_through_every_row(stub: Stub) -> None:
    days = ["2025-04-01", "2025-04-02", "2025-04-03"]
    users = [f"daily-{i:02d}" for i in range(25)]
    batch = [answer(at(d, 10), t.ROUTE_COMPLETIONS, "gpt-5.4-mini",
                    [charge("gpt-5.4-mini", 100 * (u + 1), 0, 10)], user_id=users[u])
             for d in days for u in range(25) if (u + days.index(d)) % 3]
    batch += [answer(at(d, 11), t.ROUTE_PATTERN, user_id=users[0]) for d in days]
    await record(stub, batch)

    seen: list[pb.DailyReportRow] = []
    token, pages = "", 0
    while True:
        page = await stub.GetDailyReport(pb.GetDailyReportRequest(
            start_date=days[0], end_date=days[-1], grouping=pb.REPORT_GROUPING_USER,
            page_size=7, page_token=token))
        pages += 1
        assert len(page.rows) <= 7
        seen.extend(page.rows)
        token = page.next_page_token
        if not token:
            break
    keys = [(r.date, r.key) for r in seen]
    assert keys == sorted(set(keys))  # ordered, no duplicates across pages
    expected_keys = sorted({(d, users[u]) for d in days for u in range(25)
                            if (u + days.index(d)) % 3} | {(d, users[0]) for d in days})
    assert keys == expected_keys
    assert pages == -(-len(expected_keys) // 7)
    assert sum(r.calls for r in seen) == len(batch)
    assert sum(r.cost_usd_nanos for r in seen) == sum(
        price("gpt-5.4-mini", c.usage.input_tokens, 0, 10) for r in batch for c in r.charges)

    by_route = await stub.GetDailyReport(pb.GetDailyReportRequest(
        start_date=days[0], end_date=days[-1], grouping=pb.REPORT_GROUPING_ROUTE))
    assert [(r.date, r.key) for r in by_route.rows] == [
        (d, k) for d in days for k in ("ROUTE_PATTERN", "ROUTE_COMPLETIONS")]
    assert by_route.next_page_token == ""
    assert sum(r.calls for r in by_route.rows) == len(batch)

    # a token only continues the request it came from
    first = await stub.GetDailyReport(pb.GetDailyReportRequest(
        start_date=days[0], end_date=days[-1], grouping=pb.REPORT_GROUPING_USER, page_size=5))
    for wrong in (pb.GetDailyReportRequest(start_date=days[0], end_date=days[1],
                                           grouping=pb.REPORT_GROUPING_USER,
                                           page_token=first.next_page_token),
                  pb.GetDailyReportRequest(start_date=days[0], end_date=days[-1],
                                           page_token="not-a-token")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetDailyReport(wrong)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in bad_fields(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetDailyReport(pb.GetDailyReportRequest(page_size=-1))
    assert "page_size" in bad_fields(err.value)
    huge = await stub.GetDailyReport(pb.GetDailyReportRequest(
        start_date=days[0], end_date=days[-1], grouping=pb.REPORT_GROUPING_USER,
        page_size=100_000))
    assert len(huge.rows) == len(expected_keys)  # coerced to the maximum, not an error


async def test_savings_report_compares_with_every_message_on_the_strong_model(
    stub: Stub,
) -> None:
    day = "2025-05-01"
    await record(stub, [
        answer(at(day, 8), t.ROUTE_PATTERN, baseline_input_tokens=1200),
        answer(at(day, 9), t.ROUTE_FALLBACK, baseline_input_tokens=1500),
        answer(at(day, 10), t.ROUTE_COMPLETIONS, "gpt-5.4-mini",
               [charge("gpt-5.4-mini", 700, 0, 80)], baseline_input_tokens=3000),
        answer(at(day, 11), t.ROUTE_ASSISTANT, "gpt-5.5",
               [charge("gpt-5.5", 2500, 2048, 150),
                charge("gpt-5.4-nano", 2000, 0, 120, purpose="summary")],
               baseline_input_tokens=6000),
    ])
    report = await stub.GetSavingsReport(pb.GetSavingsReportRequest(start_date=day,
                                                                    end_date=day))
    actual = price("gpt-5.4-mini", 700, 0, 80) + price("gpt-5.5", 2500, 2048, 150) + \
        price("gpt-5.4-nano", 2000, 0, 120)
    # canned and fallback answers get the typical 60 output tokens under the baseline
    baseline = price("gpt-5.5", 1200, 0, 60) + price("gpt-5.5", 1500, 0, 60) + \
        price("gpt-5.5", 3000, 0, 80) + price("gpt-5.5", 6000, 0, 150)
    assert report.calls == 4
    assert report.actual_cost_usd_nanos == actual == 9_219_000
    assert report.baseline_cost_usd_nanos == baseline == 69_000_000
    assert report.baseline_model == "gpt-5.5"
    assert report.percent_saved == pytest.approx(round(100 * (baseline - actual) / baseline, 2))
    assert report.percent_saved == pytest.approx(86.64)

    empty = await stub.GetSavingsReport(pb.GetSavingsReportRequest(start_date="1999-01-01",
                                                                   end_date="1999-01-01"))
    assert (empty.calls, empty.percent_saved, empty.baseline_model) == (0, 0.0, "gpt-5.5")


async def test_check_user_limits_reports_today_and_the_budget(stub: Stub) -> None:
    user = f"limits-{uuid.uuid4().hex[:8]}"
    now = dt.datetime.now(dt.UTC)
    fresh = await stub.CheckUserLimits(pb.CheckUserLimitsRequest(user_id=user))
    assert (fresh.messages_today, fresh.spend_today_usd_nanos, fresh.exceeded) == (0, 0, "")

    # yesterday's spend does not count; a canned answer costs nothing
    await record(stub, [
        answer(now - dt.timedelta(days=1, hours=1), t.ROUTE_ASSISTANT, "gpt-5.5",
               [charge("gpt-5.5", 0, 0, 1_000_000)], user_id=user),
        answer(now, t.ROUTE_PATTERN, user_id=user),
        answer(now, t.ROUTE_ASSISTANT, "gpt-5.5", [charge("gpt-5.5", 1000, 0, 100)],
               user_id=user),
    ])
    within = await stub.CheckUserLimits(pb.CheckUserLimitsRequest(user_id=user))
    spent = price("gpt-5.5", 1000, 0, 100)
    assert (within.messages_today, within.spend_today_usd_nanos) == (2, spent)
    assert within.exceeded == "" and within.message == ""

    # the budget is $0.01 = 10,000,000 nanos; reaching it exactly is over
    top_up = 10_000_000 - spent  # 2,000,000 nanos = 400 input tokens of gpt-5.5 ($5/M)
    await record(stub, [answer(now, t.ROUTE_ASSISTANT, "gpt-5.5",
                               [charge("gpt-5.5", top_up // 5000, 0, 0)], user_id=user)])
    over = await stub.CheckUserLimits(pb.CheckUserLimitsRequest(user_id=user))
    assert over.spend_today_usd_nanos == 10_000_000
    assert over.messages_today == 3
    assert over.exceeded == "DAILY_BUDGET_EXCEEDED"
    assert over.message == "You've reached today's coaching budget. It resets at midnight UTC."

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CheckUserLimits(pb.CheckUserLimitsRequest())
    assert "user_id" in bad_fields(err.value)
