"""Answer records for the ledger tests, and sending them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from coach.ledger.v1 import ledger_service_pb2 as pb
from coach.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2
from google.protobuf.timestamp_pb2 import Timestamp

# $0.01 a day per user (the ledger fixture's COACH_USER_DAILY_BUDGET_USD)
BUDGET_USD = "0.01"


def at(day: str, hour: int = 12, minute: int = 0) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=hour, minute=minute, tzinfo=dt.UTC)


def charge(model: str, inp: int = 0, cached: int = 0, out: int = 0, reasoning: int = 0,
           purpose: str = "answer") -> types_pb2.Charge:
    return types_pb2.Charge(model=model, purpose=purpose, usage=types_pb2.Usage(
        input_tokens=inp, cached_input_tokens=cached, output_tokens=out,
        reasoning_tokens=reasoning))


def answer(
    when: dt.datetime,
    route: int,
    model: str = "",
    charges: Sequence[types_pb2.Charge] = (),
    *,
    user_id: str = "user-1",
    request_id: str | None = None,
    message_type: int = types_pb2.MESSAGE_TYPE_QUESTION,
    baseline_input_tokens: int = 0,
    latency_ms: int = 120,
) -> pb.AnswerRecord:
    ts = Timestamp()
    ts.FromDatetime(when)
    return pb.AnswerRecord(
        request_id=request_id or uuid.uuid4().hex, user_id=user_id, route=route,  # type: ignore[arg-type]
        message_type=message_type, model=model, charges=list(charges),  # type: ignore[arg-type]
        latency_ms=latency_ms, answer_time=ts, baseline_input_tokens=baseline_input_tokens,
    )


async def record(stub: pb_grpc.LedgerServiceStub,
                 records: Sequence[pb.AnswerRecord]) -> pb.RecordAnswersResponse:
    return await stub.RecordAnswers(pb.RecordAnswersRequest(records=list(records)))
