"""`coach report` / `coach savings` against an in-process ledger."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest
from coach.ledger.v1 import ledger_service_pb2 as pb
from coach.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2 as t

from services.cli import daily_chart, main, usd
from services.common.pricing import PriceBook
from tests.helpers.services import RunningService, start_service, stop_service
from tests.ledger.records import answer, at, charge, record

BOOK = PriceBook.load()
DAYS = ["2025-06-01", "2025-06-02", "2025-06-03"]


def price(model: str, inp: int, cached: int, out: int) -> int:
    return BOOK.cost_usd_nanos(model, inp, cached, out).nanos


@pytest.fixture(scope="module")
async def june(stub: pb_grpc.LedgerServiceStub) -> int:
    """Three days of traffic; returns the range's total cost."""
    records = []
    for n, day in enumerate(DAYS):
        records += [answer(at(day, 8), t.ROUTE_PATTERN, user_id="ana", baseline_input_tokens=900)
                    for _ in range(3)]
        records += [answer(at(day, 9, i), t.ROUTE_COMPLETIONS, "gpt-5.4-mini",
                           [charge("gpt-5.4-mini", 1500, 1024, 90)], user_id="ben",
                           baseline_input_tokens=2500) for i in range(4 + n)]
        records += [answer(at(day, 10), t.ROUTE_ASSISTANT, "gpt-5.5",
                           [charge("gpt-5.5", 5000, 4096, 220),
                            charge("gpt-5.4-nano", 3000, 0, 150, purpose="summary")],
                           user_id="cleo", baseline_input_tokens=6000)]
    records.append(answer(at(DAYS[1], 11), t.ROUTE_FALLBACK, user_id="ana"))
    await record(stub, records)
    return sum(price(c.model, c.usage.input_tokens, c.usage.cached_input_tokens,
                     c.usage.output_tokens) for r in records for c in r.charges)


async def coach(capsys: pytest.CaptureFixture[str], address: str, *argv: str,
                token: str = "") -> tuple[int, str, str]:
    env = {"COACH_LEDGER_ADDR": address, **({"COACH_AUTH_TOKEN": token} if token else {})}
    code = await asyncio.to_thread(main, list(argv), env)
    out, err = capsys.readouterr()
    return code, out, err


async def test_report_for_one_day_prints_table_chart_and_savings(
    ledger: RunningService, june: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await coach(capsys, ledger.address, "report", "--date", DAYS[0])
    assert code == 0, err
    mini = 4 * price("gpt-5.4-mini", 1500, 1024, 90)
    lines = out.splitlines()
    assert lines[0] == f"Cost by route and model, {DAYS[0]} (UTC)"
    row = next(line for line in lines if line.startswith("completions"))
    assert row.split() == ["completions", "gpt-5.4-mini", "4", "6,000", "4,096", "360", usd(mini)]
    assert next(line for line in lines if line.startswith("pattern")).split()[:3] == \
        ["pattern", "-", "3"]
    upkeep = next(line for line in lines if "gpt-5.4-nano" in line)
    assert upkeep.split()[:3] == ["assistant", "gpt-5.4-nano", "0"]
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[1] == "8"  # 3 canned + 4 cheap + 1 stateful answers
    assert mini == 3_355_200 and usd(mini) == "$0.003355"  # 6 decimals, half up
    chart = [line for line in lines if line.startswith(f"{DAYS[0]} │")]
    assert len(chart) == 1 and "█" in chart[0] and "▓" in chart[0]
    assert any(line.startswith("Savings: ") and "% saved over 8 answers" in line
               for line in lines)


async def test_report_over_a_range_charts_one_line_per_day(
    ledger: RunningService, june: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await coach(capsys, ledger.address, "report", "--from", DAYS[0], "--to",
                               DAYS[-1], "--by", "user")
    assert code == 0
    chart = [line for line in out.splitlines() if "│" in line]
    assert [line[:10] for line in chart] == DAYS
    assert max(len(line.split("│")[1].rstrip()) for line in chart) == 40  # costliest day: full bar
    assert "Daily cost by user" in out
    assert any(line.split()[:3] == [DAYS[2], "ben", "6"] for line in out.splitlines())
    print(out)


async def test_report_json_is_machine_readable_and_exact(
    ledger: RunningService, june: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await coach(capsys, ledger.address, "report", "--from", DAYS[0], "--to",
                               DAYS[-1], "--json", "--by", "user")
    assert code == 0
    doc = json.loads(out)
    report = doc["cost_report"]
    assert (doc["start_date"], doc["end_date"]) == (DAYS[0], DAYS[-1])
    assert report["total_calls"] == 3 * 3 + (4 + 5 + 6) + 3 + 1
    assert report["total_cost_usd_nanos"] == june
    assert sum(r["cost_usd_nanos"] for r in report["rows"]) == june
    assert {r["route"] for r in report["rows"]} == {
        "ROUTE_PATTERN", "ROUTE_COMPLETIONS", "ROUTE_ASSISTANT", "ROUTE_FALLBACK"}
    assert sum(r["cost_usd_nanos"] for r in doc["daily_by_route"]) == june
    assert {r["user_id"] for r in doc["daily_by_user"]} == {"ana", "ben", "cleo"}
    savings = doc["savings"]
    assert savings["actual_cost_usd_nanos"] == june
    assert savings["baseline_model"] == "gpt-5.5"
    assert 0 < savings["percent_saved"] < 100


async def test_savings_command(
    ledger: RunningService, june: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await coach(capsys, ledger.address, "savings", "--date", DAYS[1], "--json")
    assert code == 0
    assert json.loads(out)["calls"] == 3 + 5 + 1 + 1
    code, out, _ = await coach(capsys, ledger.address, "savings", "--date", DAYS[1])
    assert code == 0 and "% saved over 10 answers" in out


async def test_bad_dates_and_arguments_exit_2_with_a_message(
    ledger: RunningService, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await coach(capsys, ledger.address, "report", "--date", "2025-13-01")
    assert (code, out) == (2, "")
    assert "start_date" in err and "2025-13-01" in err
    code, _, err = await coach(capsys, ledger.address, "report", "--from", "2025-06-03",
                               "--to", "2025-06-01")
    assert code == 2 and "after end_date" in err
    code, _, err = await coach(capsys, ledger.address, "report", "--to", "2025-06-01")
    assert code == 2 and "--to needs --from" in err
    code, _, _ = await coach(capsys, ledger.address, "report", "--by", "model")
    assert code == 2


async def test_unreachable_ledger_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await coach(capsys, "127.0.0.1:1", "savings")
    assert code == 1 and "UNAVAILABLE" in err


async def test_cli_sends_the_auth_token(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    locked = await start_service("ledger", {"DATABASE_URL": pg_url, "COACH_AUTH_TOKEN": "s3cret"})
    try:
        code, _, err = await coach(capsys, locked.address, "savings")
        assert code == 1 and "UNAUTHENTICATED" in err
        code, out, _ = await coach(capsys, locked.address, "savings", token="s3cret")
        assert code == 0 and "Savings:" in out
    finally:
        await stop_service(locked)


def test_chart_segments_add_up_to_the_bar() -> None:
    day = dt.date(2025, 1, 1)
    rows = [pb.DailyReportRow(date="2025-01-01", key=k, cost_usd_nanos=c)
            for k, c in (("ROUTE_ASSISTANT", 1), ("ROUTE_COMPLETIONS", 1), ("ROUTE_PATTERN", 1))]
    line = daily_chart([day], rows)[1]
    bar = line.split("│")[1]
    assert len(bar.strip()) == 40
    assert (bar.count("█"), bar.count("▓"), bar.count("░")) == (13, 14, 13)
