"""coach.ledger.v1.LedgerService: validate, proto -> domain -> proto."""

from __future__ import annotations

import datetime as dt

import grpc
from coach.ledger.v1 import ledger_service_pb2 as pb
from coach.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2

from services.common.errors import Validator
from services.common.exchange import AnswerRecord
from services.common.usage import Charge
from services.common.vocabulary import MessageType, Route
from services.ledger.accounting import AnswerRecorder
from services.ledger.limits import DailyLimits
from services.ledger.reports import DailyRow, SpendReports

MAX_RECORDS_PER_BATCH = 5000
MAX_ID_CHARS = 256
MAX_VIOLATIONS = 20
_ROUTES = set(types_pb2.Route.values()) - {types_pb2.ROUTE_UNSPECIFIED}
_MESSAGE_TYPES = set(types_pb2.MessageType.values())


class LedgerServicer(pb_grpc.LedgerServiceServicer):
    def __init__(self, recorder: AnswerRecorder, reports: SpendReports, limits: DailyLimits) -> None:
        self._recorder = recorder
        self._reports = reports
        self._limits = limits

    async def RecordAnswers(
        self, request: pb.RecordAnswersRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordAnswersResponse:
        entries = answer_entries(request)
        outcome = await self._recorder.record(entries)
        return pb.RecordAnswersResponse(recorded=outcome.recorded, duplicates=outcome.duplicates)

    async def GetCostReport(
        self, request: pb.GetCostReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCostReportResponse:
        report = await self._reports.cost_report(request.start_date, request.end_date)
        return pb.GetCostReportResponse(
            rows=[
                pb.CostReportRow(
                    route=r.route,  # type: ignore[arg-type]
                    model=r.model, calls=r.calls, input_tokens=r.input_tokens,
                    cached_input_tokens=r.cached_input_tokens, output_tokens=r.output_tokens,
                    cost_usd_nanos=r.cost_usd_nanos,
                )
                for r in report.rows
            ],
            total_calls=report.total_calls,
            total_cost_usd_nanos=report.total_cost_usd_nanos,
        )

    async def GetDailyReport(
        self, request: pb.GetDailyReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDailyReportResponse:
        v = Validator()
        v.check(request.grouping in pb.ReportGrouping.values(), "grouping",
                "must be a ReportGrouping value")
        v.raise_if_any()
        by_user = request.grouping == pb.REPORT_GROUPING_USER
        page = await self._reports.daily_report(
            request.start_date, request.end_date, by_user, request.page_size, request.page_token
        )
        return pb.GetDailyReportResponse(
            rows=[_daily_row(r, by_user) for r in page.rows],
            next_page_token=page.next_page_token,
        )

    async def GetSavingsReport(
        self, request: pb.GetSavingsReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSavingsReportResponse:
        report = await self._reports.savings_report(request.start_date, request.end_date)
        return pb.GetSavingsReportResponse(
            calls=report.calls,
            actual_cost_usd_nanos=report.actual_cost_usd_nanos,
            baseline_cost_usd_nanos=report.baseline_cost_usd_nanos,
            percent_saved=report.percent_saved,
            baseline_model=report.baseline_model,
        )

    async def CheckUserLimits(
        self, request: pb.CheckUserLimitsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckUserLimitsResponse:
        v = Validator()
        v.text("user_id", request.user_id, max_chars=MAX_ID_CHARS, required=True)
        v.raise_if_any()
        check = await self._limits.check(request.user_id)
        return pb.CheckUserLimitsResponse(
            messages_today=check.messages_today,
            spend_today_usd_nanos=check.spend_today_usd_nanos,
            exceeded=check.exceeded,
            message=check.message,
        )


def _daily_row(row: DailyRow, by_user: bool) -> pb.DailyReportRow:
    key = row.key if by_user else route_name(int(row.key))
    return pb.DailyReportRow(
        date=row.day.isoformat(), key=key, calls=row.calls, input_tokens=row.input_tokens,
        cached_input_tokens=row.cached_input_tokens, output_tokens=row.output_tokens,
        cost_usd_nanos=row.cost_usd_nanos,
    )


def route_name(route: int) -> str:
    try:
        return types_pb2.Route.Name(route)  # type: ignore[arg-type]
    except ValueError:
        return str(route)


def answer_entries(request: pb.RecordAnswersRequest) -> list[AnswerRecord]:
    """Validates a whole batch (nothing is stored if any record is bad) into domain entries."""
    v = Validator()
    v.check(len(request.records) <= MAX_RECORDS_PER_BATCH, "records",
            f"at most {MAX_RECORDS_PER_BATCH} records per batch")
    entries: list[AnswerRecord] = []
    for i, rec in enumerate(request.records):
        where = f"records[{i}]"
        v.text(f"{where}.request_id", rec.request_id, max_chars=MAX_ID_CHARS, required=True)
        v.text(f"{where}.user_id", rec.user_id, max_chars=MAX_ID_CHARS, required=True)
        v.text(f"{where}.model", rec.model, max_chars=MAX_ID_CHARS)
        v.check(rec.route in _ROUTES, f"{where}.route", "must be a Route other than UNSPECIFIED")
        v.check(rec.message_type in _MESSAGE_TYPES, f"{where}.message_type",
                "not a MessageType")
        v.check(rec.latency_ms >= 0, f"{where}.latency_ms", "must not be negative")
        v.tokens(f"{where}.baseline_input_tokens", rec.baseline_input_tokens)
        v.check(rec.HasField("answer_time"), f"{where}.answer_time", "required")
        charges: list[Charge] = []
        for j, ch in enumerate(rec.charges):
            cw = f"{where}.charges[{j}]"
            u = ch.usage
            v.text(f"{cw}.model", ch.model, max_chars=MAX_ID_CHARS, required=True)
            v.text(f"{cw}.purpose", ch.purpose, max_chars=MAX_ID_CHARS)
            v.tokens(f"{cw}.usage", u.input_tokens, u.cached_input_tokens, u.output_tokens,
                     u.reasoning_tokens, u.cache_write_tokens)
            v.check(u.cached_input_tokens <= u.input_tokens, f"{cw}.usage.cached_input_tokens",
                    "cached input tokens are part of input tokens: must not exceed them")
            v.check(u.cached_input_tokens > u.input_tokens  # reported once, above
                    or u.cached_input_tokens + u.cache_write_tokens <= u.input_tokens,
                    f"{cw}.usage.cache_write_tokens",
                    "cached and cache-write tokens are parts of input tokens: must not exceed them")
            v.text(f"{cw}.usage.service_tier", u.service_tier, max_chars=MAX_ID_CHARS)
            v.check(u.reasoning_tokens <= u.output_tokens, f"{cw}.usage.reasoning_tokens",
                    "reasoning tokens are part of output tokens: must not exceed them")
            charges.append(Charge.of(ch))
        if rec.HasField("answer_time"):
            answer_time = rec.answer_time.ToDatetime(tzinfo=dt.UTC)
        else:
            answer_time = dt.datetime.fromtimestamp(0, dt.UTC)
        if v.violations:
            continue  # nothing is stored: the rest is only checked
        entries.append(AnswerRecord(
            request_id=rec.request_id, user_id=rec.user_id, route=Route(rec.route),
            message_type=MessageType(rec.message_type) if rec.message_type else None,
            model=rec.model, charges=tuple(charges),
            latency_ms=rec.latency_ms, answer_time=answer_time,
            baseline_input_tokens=rec.baseline_input_tokens,
        ))
    if len(v.violations) > MAX_VIOLATIONS:  # error details travel in size-limited trailers
        more = len(v.violations) - MAX_VIOLATIONS
        del v.violations[MAX_VIOLATIONS:]
        v.add("records", f"... and {more} more problems")
    v.raise_if_any("INVALID_ANSWER_RECORD")
    return entries
