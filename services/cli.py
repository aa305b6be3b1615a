"""`coach`: the operator's command line, over gRPC to the running suite.

    coach report [--date D | --from D [--to D]] [--by route|user] [--json]
    coach savings [--date D | --from D [--to D]] [--json]

`report` prints the cost table by route and model (calls, tokens, cost in $
with 6 decimals), a chart of the daily cost by route (one line per day, bars
stacked by route), and the savings against the baseline policy. `--by user`
adds the daily spend per user. `--json` prints the same, machine-readable
(money as integer nano-USD plus a decimal string). Dates are UTC `YYYY-MM-DD`;
none means today.

Reads COACH_LEDGER_ADDR (default 127.0.0.1:50054), COACH_AUTH_TOKEN and the
COACH_TLS_* files, like the services. Exit codes: 0 done, 1 the ledger could
not answer, 2 bad arguments. Also runs as `python -m services.cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TextIO

import grpc
from coach.ledger.v1 import ledger_service_pb2 as pb
from coach.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2

from services.common.clients import open_channel
from services.common.rich_status import error_from_rpc
from services.common.settings import Env, PeerSettings, peer_settings

RPC_TIMEOUT_S = 15.0
BAR_WIDTH = 40
# Bars stacked in this order, each route with its own glyph.
ROUTE_GLYPHS = {
    "ROUTE_ASSISTANT": "█",
    "ROUTE_COMPLETIONS": "▓",
    "ROUTE_PATTERN": "░",
    "ROUTE_FALLBACK": "▒",
}
_MICRO = Decimal("0.000001")


@dataclass(frozen=True)
class CliSettings:
    ledger: PeerSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CliSettings:
        return cls(ledger=peer_settings(Env(environ), "ledger"))


class UsageError(Exception):
    """Bad arguments (exit code 2)."""


class LedgerError(Exception):
    """The ledger refused or could not answer; ``exit_code`` 2 for bad input, else 1."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---- formatting ----------------------------------------------------------------


def usd(nanos: int) -> str:
    """Nano-USD as dollars with 6 decimals, rounded half up: 1_234_567 -> "$0.001235"."""
    return "$" + str((Decimal(nanos) / 1_000_000_000).quantize(_MICRO, rounding=ROUND_HALF_UP))


def usd_plain(nanos: int) -> str:
    """Exact dollars as a decimal string with 9 decimals (for JSON)."""
    return str((Decimal(nanos) / 1_000_000_000).quantize(Decimal("0.000000001")))


def route_label(route: int | str) -> str:
    name = types_pb2.Route.Name(route) if isinstance(route, int) else route  # type: ignore[arg-type]
    return name.removeprefix("ROUTE_").lower()


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def _range_label(start: dt.date, end: dt.date) -> str:
    return start.isoformat() if start == end else f"{start.isoformat()} .. {end.isoformat()}"


def cost_table(report: pb.GetCostReportResponse) -> list[str]:
    rows = [
        [route_label(r.route), r.model or "-", f"{r.calls:,}", f"{r.input_tokens:,}",
         f"{r.cached_input_tokens:,}", f"{r.output_tokens:,}", usd(r.cost_usd_nanos)]
        for r in report.rows
    ]
    rows.append(["total", "", f"{report.total_calls:,}",
                 f"{sum(r.input_tokens for r in report.rows):,}",
                 f"{sum(r.cached_input_tokens for r in report.rows):,}",
                 f"{sum(r.output_tokens for r in report.rows):,}",
                 usd(report.total_cost_usd_nanos)])
    return _table(["route", "model", "calls", "input", "cached", "output", "cost"], rows,
                  right={2, 3, 4, 5, 6})


def daily_chart(days: Sequence[dt.date], by_route: Sequence[pb.DailyReportRow]) -> list[str]:
    """One line per day: cost stacked by route, scaled to the costliest day."""
    cost: dict[tuple[str, str], int] = {}
    for r in by_route:
        cost[(r.date, r.key)] = cost.get((r.date, r.key), 0) + r.cost_usd_nanos
    totals = {d: sum(cost.get((d.isoformat(), k), 0) for k in ROUTE_GLYPHS) for d in days}
    top = max(totals.values(), default=0)
    lines = ["Daily cost by route (UTC)  "
             + "  ".join(f"{g} {route_label(k)}" for k, g in ROUTE_GLYPHS.items())]
    for d in days:
        bar, done, cum = "", 0, 0
        for key, glyph in ROUTE_GLYPHS.items():
            cum += cost.get((d.isoformat(), key), 0)
            # cumulative rounding: segments always add up to the day's bar length
            upto = (cum * BAR_WIDTH + top // 2) // top if top else 0
            bar += glyph * (upto - done)
            done = upto
        lines.append(f"{d.isoformat()} │{bar.ljust(BAR_WIDTH)}│ {usd(totals[d])}")
    return lines


def user_table(rows: Sequence[pb.DailyReportRow]) -> list[str]:
    body = [[r.date, r.key, f"{r.calls:,}", f"{r.input_tokens:,}", f"{r.cached_input_tokens:,}",
             f"{r.output_tokens:,}", usd(r.cost_usd_nanos)] for r in rows]
    return _table(["date", "user", "calls", "input", "cached", "output", "cost"], body,
                  right={2, 3, 4, 5, 6})


def savings_line(s: pb.GetSavingsReportResponse) -> str:
    return (
        f"Savings: {usd(s.actual_cost_usd_nanos)} spent vs {usd(s.baseline_cost_usd_nanos)} "
        f"under the baseline ({s.baseline_model}, every message on the stateful tier with its "
        f"full history): {s.percent_saved:.2f}% saved over {s.calls:,} answers"
    )


def _row_json(row: Any, fields: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {f: getattr(row, f) for f in fields}
    out["cost_usd_nanos"] = row.cost_usd_nanos
    out["cost_usd"] = usd_plain(row.cost_usd_nanos)
    return out


_TOKEN_FIELDS = ("calls", "input_tokens", "cached_input_tokens", "output_tokens")


def savings_json(s: pb.GetSavingsReportResponse) -> dict[str, Any]:
    return {
        "calls": s.calls,
        "actual_cost_usd_nanos": s.actual_cost_usd_nanos,
        "actual_cost_usd": usd_plain(s.actual_cost_usd_nanos),
        "baseline_cost_usd_nanos": s.baseline_cost_usd_nanos,
        "baseline_cost_usd": usd_plain(s.baseline_cost_usd_nanos),
        "percent_saved": s.percent_saved,
        "baseline_model": s.baseline_model,
    }


# ---- talking to the ledger ---------------------------------------------------------


class LedgerClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = pb_grpc.LedgerServiceStub(channel)

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            code, reason, violations = error_from_rpc(exc)
            detail = "; ".join(f"{v.field}: {v.description}" for v in violations)
            message = detail or exc.details() or code
            if code == "INVALID_ARGUMENT":
                raise LedgerError(f"coach: {message}", 2) from None
            raise LedgerError(f"coach: the ledger could not answer ({code} {reason}): "
                              f"{exc.details()}", 1) from None

    async def cost_report(self, start: str, end: str) -> pb.GetCostReportResponse:
        return await self._call("GetCostReport",
                                pb.GetCostReportRequest(start_date=start, end_date=end))

    async def savings(self, start: str, end: str) -> pb.GetSavingsReportResponse:
        return await self._call("GetSavingsReport",
                                pb.GetSavingsReportRequest(start_date=start, end_date=end))

    async def daily(self, start: str, end: str, by_user: bool) -> list[pb.DailyReportRow]:
        grouping = pb.REPORT_GROUPING_USER if by_user else pb.REPORT_GROUPING_ROUTE
        rows: list[pb.DailyReportRow] = []
        token = ""
        while True:
            page = await self._call("GetDailyReport", pb.GetDailyReportRequest(
                start_date=start, end_date=end, grouping=grouping, page_size=1000,
                page_token=token))
            rows.extend(page.rows)
            token = page.next_page_token
            if not token:
                return rows


# ---- commands ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coach", description="Coach suite operator commands.")
    commands = parser.add_subparsers(dest="command", required=True)

    def dates(p: argparse.ArgumentParser) -> None:
        p.add_argument("--date", help="one UTC day, YYYY-MM-DD (default: today)")
        p.add_argument("--from", dest="start", help="first UTC day, YYYY-MM-DD")
        p.add_argument("--to", dest="end", help="last UTC day, YYYY-MM-DD (default: today)")
        p.add_argument("--json", action="store_true", help="machine-readable JSON")

    report = commands.add_parser("report", help="cost by route and model, daily chart, savings")
    dates(report)
    report.add_argument("--by", choices=("route", "user"), default="route",
                        help="daily breakdown by route (chart) or also by user (table)")
    savings = commands.add_parser("savings", help="actual spend vs the baseline policy")
    dates(savings)
    estimate = commands.add_parser(
        "estimate", help="expected monthly cost of an exported message log (no upstream call)")
    estimate.add_argument("--messages", required=True,
                          help="JSON Lines: user_id, message, ts (ISO 8601 or epoch seconds)")
    return parser


def _estimate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Replays the log through the router's decision and a token model (services/estimate.py)."""
    from services import estimate as est
    from services.common.pricing import PriceBook
    from services.common.tokens import count_tokens
    from services.llm.config import DATA_DIR as LLM_DATA
    from services.llm.persona import load_persona
    from services.llm.prompt_prefix import baseline_prefix_tokens
    from services.llm.tools import load_tools
    from services.router.decision import MessageContext, Router

    try:
        with open(args.messages, encoding="utf-8") as handle:
            rows, errors = est.parse_log(handle)
    except OSError as exc:
        err.write(f"cannot read {args.messages}: {exc}\n")
        return 2
    err.writelines(f"{args.messages}: {error}\n" for error in errors)
    if not rows:
        err.write("no usable rows\n")
        return 1
    router = Router.from_files()
    persona = load_persona(LLM_DATA / "persona.yaml")

    def decide(message: str, count: int, hour: int | None) -> Any:
        return router.decide(message, MessageContext(message_count=count, local_hour=hour))

    result = est.estimate(
        rows, decide, PriceBook.load(),
        prefix_tokens=baseline_prefix_tokens(persona, load_tools(LLM_DATA / "tools.yaml")),
        persona_tokens=count_tokens(persona.coach),
        # the baseline's model: every message on the stateful tier's strong model
        strong_model=Router.from_files(policy="baseline").decide(
            "hello", MessageContext(message_count=10)).model,
    )
    out.write(est.render(result, errors))
    return 0


def _requested_range(args: argparse.Namespace) -> tuple[str, str]:
    if args.date and (args.start or args.end):
        raise UsageError("coach: use --date or --from/--to, not both")
    if args.end and not args.start:
        raise UsageError("coach: --to needs --from")
    if args.date:
        return args.date, args.date
    return args.start or "", args.end or ""


def _days(start: str, end: str) -> list[dt.date]:
    """Every day of a range the ledger accepted (empty means today, UTC)."""
    today = dt.datetime.now(dt.UTC).date()
    first = dt.date.fromisoformat(start) if start else today
    last = dt.date.fromisoformat(end) if end else today
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


async def _report(client: LedgerClient, args: argparse.Namespace, out: TextIO) -> None:
    start, end = _requested_range(args)
    cost = await client.cost_report(start, end)  # validates the dates first
    by_route = await client.daily(start, end, by_user=False)
    by_user = await client.daily(start, end, by_user=True) if args.by == "user" else []
    savings = await client.savings(start, end)
    days = _days(start, end)
    if args.json:
        doc: dict[str, Any] = {
            "start_date": days[0].isoformat(),
            "end_date": days[-1].isoformat(),
            "cost_report": {
                "rows": [
                    {"route": types_pb2.Route.Name(r.route), "model": r.model,
                     **_row_json(r, _TOKEN_FIELDS)}
                    for r in cost.rows
                ],
                "total_calls": cost.total_calls,
                "total_cost_usd_nanos": cost.total_cost_usd_nanos,
                "total_cost_usd": usd_plain(cost.total_cost_usd_nanos),
            },
            "daily_by_route": [{"date": r.date, "route": r.key, **_row_json(r, _TOKEN_FIELDS)}
                               for r in by_route],
            "savings": savings_json(savings),
        }
        if args.by == "user":
            doc["daily_by_user"] = [{"date": r.date, "user_id": r.key,
                                     **_row_json(r, _TOKEN_FIELDS)} for r in by_user]
        out.write(json.dumps(doc, indent=2) + "\n")
        return
    lines = [f"Cost by route and model, {_range_label(days[0], days[-1])} (UTC)", ""]
    lines += cost_table(cost)
    lines += ["", *daily_chart(days, by_route)]
    if args.by == "user":
        lines += ["", "Daily cost by user", *user_table(by_user)]
    lines += ["", savings_line(savings)]
    out.write("\n".join(lines) + "\n")


async def _savings(client: LedgerClient, args: argparse.Namespace, out: TextIO) -> None:
    start, end = _requested_range(args)
    savings = await client.savings(start, end)
    if args.json:
        out.write(json.dumps(savings_json(savings), indent=2) + "\n")
    else:
        days = _days(start, end)
        out.write(f"{_range_label(days[0], days[-1])} (UTC)\n{savings_line(savings)}\n")


async def run_cli(argv: Sequence[str], settings: CliSettings, out: TextIO, err: TextIO) -> int:
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse printed its message
        return int(exc.code or 0)
    if args.command == "estimate":
        return _estimate(args, out, err)
    channel = open_channel(settings.ledger)
    try:
        client = LedgerClient(channel)
        if args.command == "report":
            await _report(client, args, out)
        else:
            await _savings(client, args, out)
        return 0
    except UsageError as exc:
        err.write(f"{exc}\n")
        return 2
    except LedgerError as exc:
        err.write(f"{exc}\n")
        return exc.exit_code
    finally:
        await channel.close()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Console entry point (`coach`); returns the exit code."""
    settings = CliSettings.from_env(environ)
    return asyncio.run(run_cli(sys.argv[1:] if argv is None else argv, settings,
                               sys.stdout, sys.stderr))


if __name__ == "__main__":
    sys.exit(main())
