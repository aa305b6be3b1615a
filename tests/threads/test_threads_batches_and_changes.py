"""RecordExchanges (the routers' journal batches) and WatchUserChanges (their caches' truth)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from coach.threads.v1 import threads_service_pb2 as pb
from coach.threads.v1 import threads_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2

from tests.threads.builders import exchange, rid

Stub = pb_grpc.ThreadsServiceStub


def batch(*requests: pb.RecordExchangeRequest, origin: str = "router-a") -> pb.RecordExchangesRequest:
    return pb.RecordExchangesRequest(exchanges=[r.exchange for r in requests], origin=origin)


async def test_a_batch_is_stored_in_order_and_idempotent(stub: Stub, user_id: str) -> None:
    items = [exchange(user_id, f"message {i}", f"reply {i}") for i in range(5)]
    first = await stub.RecordExchanges(batch(*items))
    assert [(r.request_id, r.created, r.rejected_reason) for r in first.results] == [
        (i.exchange.request_id, True, "") for i in items]
    again = await stub.RecordExchanges(batch(*items))  # the journal re-sent it after a crash
    assert [r.created for r in again.results] == [False] * 5
    assert not any(r.rejected_reason for r in again.results)
    page = await stub.ListMessages(pb.ListMessagesRequest(user_id=user_id, page_size=20))
    texts = [m.text for m in page.messages][::-1]
    assert texts == [t for i in range(5) for t in (f"message {i}", f"reply {i}")]
    state = await stub.GetUserState(pb.GetUserStateRequest(user_id=user_id))
    assert state.message_count == 5


async def test_one_bad_exchange_is_reported_and_does_not_hold_the_others_back(
    stub: Stub, user_id: str
) -> None:
    other = f"other-{uuid.uuid4().hex[:8]}"
    taken = rid()
    await stub.RecordExchange(exchange(other, "hi", "Hello!", taken))
    good, bad_route = exchange(user_id, "one", "Sure."), exchange(user_id, "two", "Okay.")
    bad_route.exchange.route = 99  # type: ignore[assignment]
    clash = exchange(user_id, "three", "Right.", taken)  # another user's request id
    last = exchange(user_id, "four", "Done.")
    reply = await stub.RecordExchanges(batch(good, bad_route, clash, last))
    outcome = [(r.created, r.rejected_reason) for r in reply.results]
    assert outcome == [(True, ""), (False, "INVALID_REQUEST"), (False, "REQUEST_ID_REUSED"),
                       (True, "")]
    assert "exchange.route" in reply.results[1].rejected_message
    state = await stub.GetUserState(pb.GetUserStateRequest(user_id=user_id))
    assert state.message_count == 2


async def test_user_state_refuses_another_users_request_id(stub: Stub, user_id: str) -> None:
    taken = rid()
    await stub.RecordExchange(exchange(f"other-{uuid.uuid4().hex[:8]}", "hi", "Hello!", taken))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUserState(pb.GetUserStateRequest(user_id=user_id, request_id=taken))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def changes(stub: Stub) -> AsyncIterator[pb.WatchUserChangesResponse]:
    async for message in stub.WatchUserChanges(pb.WatchUserChangesRequest()):
        yield message


async def next_change(stream: AsyncIterator[pb.WatchUserChangesResponse], user_id: str
                      ) -> pb.WatchUserChangesResponse:
    async def find() -> pb.WatchUserChangesResponse:
        async for message in stream:
            if message.user_id == user_id:
                return message
        raise AssertionError("the stream ended")
    return await asyncio.wait_for(find(), 5)


async def test_every_replica_tells_its_watchers_of_every_stored_exchange(
    stubs: list[Stub], user_id: str
) -> None:
    """A change stored through one replica reaches a watcher of the other (PostgreSQL NOTIFY),
    with the writer's origin; the first message says the stream is live."""
    watched = changes(stubs[1])
    live = await asyncio.wait_for(anext(watched), 5)
    assert live.user_id == ""
    await stubs[0].RecordExchanges(batch(exchange(user_id, "hey", "Hi!"), origin="router-a"))
    change = await next_change(watched, user_id)
    assert change.origin == "router-a"
    await stubs[0].RecordExchange(exchange(user_id, "again", "Yes?"))  # no origin given
    assert (await next_change(watched, user_id)).origin == ""
    turn = pb.RunStatefulTurnRequest(
        request_id=rid(), user_id=user_id, message="I keep skipping my runs",
        message_type=types_pb2.MESSAGE_TYPE_STRUGGLING, model="gpt-5.5", origin="router-b")
    await stubs[0].RunStatefulTurn(turn, timeout=10)
    assert (await next_change(watched, user_id)).origin == "router-b"
    await watched.aclose()  # type: ignore[attr-defined]


async def test_a_watcher_is_not_told_of_its_own_writes(stubs: list[Stub], user_id: str) -> None:
    async def watch(origin: str) -> AsyncIterator[pb.WatchUserChangesResponse]:
        async for message in stubs[0].WatchUserChanges(pb.WatchUserChangesRequest(origin=origin)):
            yield message

    mine = watch("router-a")
    assert (await asyncio.wait_for(anext(mine), 5)).user_id == ""
    await stubs[1].RecordExchanges(batch(exchange(user_id, "one", "Yes."), origin="router-a"))
    await stubs[1].RecordExchanges(batch(exchange(user_id, "two", "Sure."), origin="router-b"))
    change = await next_change(mine, user_id)
    assert change.origin == "router-b"  # router-a's own write was not sent to it
    await mine.aclose()  # type: ignore[attr-defined]
