"""A turn is not cancelled with its caller: it finishes, is stored once and charged once,
also when the caller stored its fallback first."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from coach.threads.v1 import threads_service_pb2 as pb
from coach.type.v1 import types_pb2

from tests.helpers.peer_fakes import FakeLedger, FakeLlm, per_user
from tests.helpers.polling import eventually
from tests.threads.builders import (
    KEEP,
    Stub,
    active_rows,
    cheap,
    drive_to_rotation,
    exchange,
    rid,
    turn_request,
)


async def test_a_failed_first_conversation_does_not_pay_for_its_summary_twice(
    stub: Stub, llm: FakeLlm, ledger: FakeLedger, user_id: str, db: asyncpg.Connection
) -> None:
    """A first stateful turn after more than N messages folds the older ones into the
    summary before creating the conversation; when creating it fails, the retry starts
    from that summary instead of summarizing the same messages again."""
    for i in range(15):  # 30 messages answered outside the stateful tier
        await stub.RecordExchange(cheap(user_id, f"check-in {i}", f"coach: check-in {i}"))
    llm.failures["CreateConversation"] = 100
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RunStatefulTurn(turn_request(user_id, "first deep question"))
    llm.failures.clear()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await active_rows(db, user_id) == 0
    assert [len(c.turns) for c in per_user(llm.summarize_calls, user_id)] == [30 - KEEP]

    done = await stub.RunStatefulTurn(turn_request(user_id, "asking again"))
    assert done.created and await active_rows(db, user_id) == 1
    assert [len(c.turns) for c in per_user(llm.summarize_calls, user_id)] == [30 - KEEP]
    view = await stub.GetConversation(pb.GetConversationRequest(user_id=user_id))
    assert view.summary == "summary of 10 messages"
    assert await db.fetchval(
        "SELECT count(*) FROM threads.first_summaries WHERE user_id = $1", user_id) == 0
    # The one summary paid for is charged once, to the answer that finally used it.
    await eventually(lambda: any(r.request_id == done.exchange.request_id
                               for r in ledger.for_user(user_id)))
    summary_charges = [c for r in ledger.for_user(user_id) for c in r.charges
                       if c.purpose == "summary"]
    assert len(summary_charges) == 1


async def test_a_caller_going_away_mid_rotation_leaves_the_turn_to_finish(
    stub: Stub, llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    await drive_to_rotation(stub, user_id)
    llm.create_gate = asyncio.Event()
    llm.create_entered.clear()
    call = stub.RunStatefulTurn(turn_request(user_id, "cancelled while rotating"))
    await asyncio.wait_for(llm.create_entered.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await active_rows(db, user_id) == 1  # the old one serves until the new one is mapped
    llm.create_gate.set()  # the provider conversation gets created: the turn goes on
    llm.create_gate = None
    await eventually(lambda: any(t.message == "cancelled while rotating"
                               for t in per_user(llm.turn_calls, user_id)))
    done = await stub.RunStatefulTurn(turn_request(user_id, "after the cancel"))
    assert done.created
    rows = await db.fetch("SELECT status FROM threads.conversations WHERE user_id = $1 ORDER BY id",
                          user_id)
    assert [r["status"] for r in rows] == ["archived", "active"]
    assert [len(c.turns) for c in per_user(llm.summarize_calls, user_id)] == [20]
    stored = await db.fetchval(
        "SELECT count(*) FROM threads.messages WHERE user_id = $1 AND text = $2",
        user_id, "cancelled while rotating")
    assert stored == 1


async def abandoned_turn(stub: Stub, llm: FakeLlm, user_id: str,
                         message: str) -> pb.RunStatefulTurnRequest:
    """A turn (after a first one) whose caller goes away while the upstream answers: held
    there until the test sets ``llm.turn_gate``."""
    await stub.RunStatefulTurn(turn_request(user_id, "hello"))
    llm.turn_gate = asyncio.Event()
    request = turn_request(user_id, message, rid())
    call = stub.RunStatefulTurn(request)
    await eventually(lambda: llm.active_per_user[user_id] == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    return request


async def test_a_turn_whose_caller_went_away_is_stored_and_charged_once(
    stub: Stub, llm: FakeLlm, ledger: FakeLedger, user_id: str
) -> None:
    """The router gave up (its deadline, a restart) while the upstream answered: the answer
    it paid for is stored and charged all the same, and the retry gets it back."""
    request = await abandoned_turn(stub, llm, user_id, "i keep skipping my runs")
    assert llm.turn_gate is not None
    llm.turn_gate.set()  # the upstream answers, with nobody waiting
    await eventually(lambda: request.request_id in ledger.records)
    assert ledger.records[request.request_id].route == types_pb2.ROUTE_ASSISTANT
    again = await stub.RunStatefulTurn(request)
    assert not again.created and list(again.exchange.coach_texts) == [
        "coach: i keep skipping my runs"]
    assert len([c for c in llm.turn_calls if c.request_id == request.request_id]) == 1


async def test_a_turn_finished_after_the_callers_fallback_owes_its_charge(
    stub: Stub, llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    """The router answered with a fallback and stored it before the turn it gave up on was
    done: the turn's answer is not stored over it, and its charge goes on the next exchange."""
    request = await abandoned_turn(stub, llm, user_id, "slow one")
    fallback = await stub.RecordExchange(exchange(
        user_id, "slow one", "Give me a second and try again?", request.request_id,
        route=types_pb2.ROUTE_FALLBACK, message_type=types_pb2.MESSAGE_TYPE_DEEP_COACHING))
    assert fallback.created
    assert llm.turn_gate is not None
    llm.turn_gate.set()  # the upstream answers only now, after the fallback was stored

    async def owed() -> bool:  # the turn found the fallback stored, and owes its charge
        return bool(await db.fetchval(
            "SELECT count(*) FROM threads.pending_charges WHERE user_id = $1 "
            "AND charge->>'purpose' = 'unstored_turn'", user_id))

    await eventually(owed, what="the finished turn's charge owed")
    llm.turn_gate = None
    kept = await stub.RunStatefulTurn(request)
    assert not kept.created and kept.exchange.route == types_pb2.ROUTE_FALLBACK
    following = await stub.RecordExchange(exchange(user_id, "hey", "Morning!"))
    owed = [c for c in following.exchange.charges if c.purpose == "unstored_turn"]
    assert len(owed) == 1 and owed[0].model == "gpt-5.4" and owed[0].usage.input_tokens > 0


# --- the turn lease (serializes a user's turns across replicas, holds no connection) ----
