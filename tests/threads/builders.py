"""Request builders for the threads service tests, driving a user's turns, and what they
wait for."""

from __future__ import annotations

import uuid

import asyncpg
from coach.threads.v1 import threads_service_pb2 as pb
from coach.threads.v1 import threads_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2

Stub = pb_grpc.ThreadsServiceStub
# The pruning window the threads tests run with (conftest.threads_env).
KEEP, PRUNE_AT = 20, 40


def rid() -> str:
    return f"req-{uuid.uuid4().hex}"


def turn_request(user_id: str, message: str, request_id: str | None = None, *,
                 baseline: bool = False,
                 message_type: int = types_pb2.MESSAGE_TYPE_DEEP_COACHING
                 ) -> pb.RunStatefulTurnRequest:
    return pb.RunStatefulTurnRequest(
        request_id=request_id or rid(), user_id=user_id, message=message,
        message_type=message_type, model="gpt-5.4", max_output_tokens=300, temperature=0.7,
        context=types_pb2.UserContext(display_name="Sam", current_streak=3), baseline=baseline,
    )


def exchange(user_id: str, text: str, reply: str, request_id: str | None = None, *,
             route: int = types_pb2.ROUTE_PATTERN,
             message_type: int = types_pb2.MESSAGE_TYPE_GREETING,
             model: str = "", pattern: str = "") -> pb.RecordExchangeRequest:
    charges = []
    if route == types_pb2.ROUTE_COMPLETIONS:
        charges.append(types_pb2.Charge(model=model or "gpt-5.4-mini", purpose="answer",
                                         usage=types_pb2.Usage(input_tokens=80, output_tokens=20)))
    return pb.RecordExchangeRequest(exchange=pb.Exchange(
        request_id=request_id or rid(), user_id=user_id, user_text=text, coach_texts=[reply],
        route=route, message_type=message_type, model=model,
        pattern=pattern or ("greeting_morning" if route == types_pb2.ROUTE_PATTERN else ""),
        charges=charges, latency_ms=3,
    ))


def cheap(user_id: str, text: str, reply: str) -> pb.RecordExchangeRequest:
    return exchange(user_id, text, reply, route=types_pb2.ROUTE_COMPLETIONS,
                    message_type=types_pb2.MESSAGE_TYPE_CHECK_IN, model="gpt-5.4-mini")


async def active_rows(db: asyncpg.Connection, user_id: str) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM threads.conversations WHERE user_id = $1 AND status = 'active'",
        user_id))


async def drive_to_rotation(stub: Stub, user_id: str) -> None:
    """20 turns: the conversation holds 40 messages, so the next turn rotates."""
    for i in range(PRUNE_AT // 2):
        await stub.RunStatefulTurn(turn_request(user_id, f"turn {i}"))


async def relayed_once(db: asyncpg.Connection, request_id: str) -> bool:
    """Whether the answer's outbox row is gone: the ledger took it, and nothing can send it
    again (the row goes in the transaction that saw the ledger's acknowledgement)."""
    return await db.fetchval("SELECT count(*) FROM threads.outbox WHERE request_id = $1",
                             request_id) == 0
