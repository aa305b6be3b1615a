"""``AnswerLedger`` over gRPC to coach.ledger.v1.LedgerService.RecordAnswers."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from coach.ledger.v1 import ledger_service_pb2 as ledger_pb
from coach.ledger.v1 import ledger_service_pb2_grpc
from coach.type.v1 import types_pb2

from services.common.deadlines import time_left
from services.common.exchange import AnswerRecord
from services.common.rich_status import error_from_rpc
from services.threads.peer_errors import PeerCallFailed


def answer_record_pb(record: AnswerRecord) -> ledger_pb.AnswerRecord:
    message = ledger_pb.AnswerRecord(
        request_id=record.request_id,
        user_id=record.user_id,
        route=types_pb2.Route.ValueType(record.route.value),
        message_type=types_pb2.MessageType.ValueType(
            record.message_type.value if record.message_type is not None else 0),
        model=record.model,
        charges=[types_pb2.Charge(**c.fields()) for c in record.charges],
        latency_ms=record.latency_ms,
        baseline_input_tokens=record.baseline_input_tokens,
    )
    message.answer_time.FromDatetime(record.answer_time)
    return message


class LedgerClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float) -> None:
        self._stub = ledger_service_pb2_grpc.LedgerServiceStub(channel)
        self._timeout = timeout_s

    async def record_answers(self, records: Sequence[AnswerRecord]) -> None:
        request = ledger_pb.RecordAnswersRequest(records=[answer_record_pb(r) for r in records])
        try:
            await self._stub.RecordAnswers(request, timeout=time_left(self._timeout))
        except grpc.aio.AioRpcError as exc:
            code, reason, violations = error_from_rpc(exc)
            raise PeerCallFailed("ledger", code, exc.details() or "", reason, violations) from exc
