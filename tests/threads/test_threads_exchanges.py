"""Every exchange stored once, whatever its route; the router's view of a user; paging."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from coach.threads.v1 import threads_service_pb2 as pb
from coach.threads.v1 import threads_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2

from services.common.tokens import count_tokens
from tests.helpers.peer_fakes import PREFIX_TOKENS, FakeLedger
from tests.helpers.polling import eventually
from tests.threads.builders import cheap, exchange, relayed_once, rid, turn_request

Stub = pb_grpc.ThreadsServiceStub


async def test_user_state_reflects_recorded_exchanges(stub: Stub, user_id: str) -> None:
    empty = await stub.GetUserState(pb.GetUserStateRequest(user_id=user_id))
    assert (empty.message_count, empty.messages_today, list(empty.recent_turns)) == (0, 0, [])
    first = rid()
    await stub.RecordExchange(exchange(user_id, "hey", "Morning! What's the plan today?", first))
    await stub.RecordExchange(cheap(user_id, "did my run", "Nice. How far?"))
    await stub.RecordExchange(exchange(user_id, "thanks", "Anytime.",
                                       message_type=types_pb2.MESSAGE_TYPE_ACKNOWLEDGEMENT))

    state = await stub.GetUserState(pb.GetUserStateRequest(user_id=user_id, recent_turns=4,
                                                           request_id=first))
    assert state.message_count == 3
    assert state.messages_today == 3
    assert state.last_canned_reply == "Anytime."
    assert [(t.role, t.text) for t in state.recent_turns] == [
        (types_pb2.ROLE_USER, "did my run"), (types_pb2.ROLE_COACH, "Nice. How far?"),
        (types_pb2.ROLE_USER, "thanks"), (types_pb2.ROLE_COACH, "Anytime."),
    ]
    assert state.existing.request_id == first
    assert list(state.existing.coach_texts) == ["Morning! What's the plan today?"]
    assert state.existing.route == types_pb2.ROUTE_PATTERN
    assert state.existing.pattern == "greeting_morning"
    # The default window is 6 turns; an unknown request id has no stored answer.
    state = await stub.GetUserState(pb.GetUserStateRequest(user_id=user_id, request_id=rid()))
    assert len(state.recent_turns) == 6 and not state.HasField("existing")
    assert (await stub.CountMessages(pb.CountMessagesRequest(user_id=user_id))).count == 3


async def test_record_exchange_is_idempotent(
    stub: Stub, stubs: list[Stub], user_id: str, ledger: FakeLedger, db: asyncpg.Connection
) -> None:
    request_id = rid()
    request = cheap(user_id, "checking in", "Good. What's next?")
    request.exchange.request_id = request_id
    results = await asyncio.gather(*(stubs[i % 2].RecordExchange(request) for i in range(6)))
    assert sum(r.created for r in results) == 1
    assert {r.exchange.create_time.ToMicroseconds() for r in results} == {
        results[0].exchange.create_time.ToMicroseconds()}
    retry = exchange(user_id, "checking in", "a different answer", request_id)
    again = await stub.RecordExchange(retry)
    assert not again.created and list(again.exchange.coach_texts) == ["Good. What's next?"]

    assert await db.fetchval("SELECT count(*) FROM threads.messages WHERE request_id = $1",
                             request_id) == 2
    assert (await stub.CountMessages(pb.CountMessagesRequest(user_id=user_id))).count == 1
    await eventually(lambda: relayed_once(db, request_id), what="the record relayed")
    assert ledger.deliveries[request_id] == 1
    record = ledger.records[request_id]
    assert record.route == types_pb2.ROUTE_COMPLETIONS and record.model == "gpt-5.4-mini"
    assert [(c.purpose, c.usage.input_tokens) for c in record.charges] == [("answer", 80)]


async def test_baseline_tokens_count_the_whole_history(
    stub: Stub, user_id: str, ledger: FakeLedger
) -> None:
    first, second = rid(), rid()
    await stub.RecordExchange(exchange(user_id, "hey there", "Hey! Ready?", first))
    await stub.RecordExchange(exchange(user_id, "yes let's go", "Love it.", second))
    await eventually(lambda: first in ledger.records and second in ledger.records)
    one, two = ledger.records[first].baseline_input_tokens, ledger.records[second].baseline_input_tokens
    # The prefix is the llm service's (GetPromptPrefix), not read from its files.
    assert one - count_tokens("hey there") == PREFIX_TOKENS
    prefix = PREFIX_TOKENS
    history = count_tokens("hey there") + count_tokens("Hey! Ready?")
    assert two == prefix + history + count_tokens("yes let's go")


async def test_bad_requests_store_nothing(stub: Stub, user_id: str) -> None:
    bad = exchange(user_id, "hi", "Hello!")
    bad.exchange.request_id = ""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordExchange(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RunStatefulTurn(turn_request(user_id, "   "))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await stub.CountMessages(pb.CountMessagesRequest(user_id=user_id))).count == 0


async def test_list_messages_pages_newest_first(stub: Stub, user_id: str) -> None:
    for i in range(60):
        await stub.RecordExchange(exchange(user_id, f"message {i}", f"reply {i}"))
    seen: list[str] = []
    token = ""
    sizes = []
    while True:
        page = await stub.ListMessages(pb.ListMessagesRequest(user_id=user_id, page_token=token))
        sizes.append(len(page.messages))
        seen.extend(m.text for m in page.messages)
        token = page.next_page_token
        if not token:
            break
    assert sizes == [50, 50, 20]
    expected = [t for i in reversed(range(60)) for t in (f"reply {i}", f"message {i}")]
    assert seen == expected
    big = await stub.ListMessages(pb.ListMessagesRequest(user_id=user_id, page_size=10_000))
    assert len(big.messages) == 120 and big.next_page_token == ""
    small = await stub.ListMessages(pb.ListMessagesRequest(user_id=user_id, page_size=3))
    assert [m.role for m in small.messages] == [types_pb2.ROLE_COACH, types_pb2.ROLE_USER,
                                                types_pb2.ROLE_COACH]
    for token in ("not-a-token", small.next_page_token):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListMessages(pb.ListMessagesRequest(user_id="someone-else", page_token=token))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
