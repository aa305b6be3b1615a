"""Stateful turns: one conversation per user, serialized, continuity, bounded context,
rotation, and the turn lease across replicas."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from coach.threads.v1 import threads_service_pb2 as pb
from coach.type.v1 import types_pb2

from services.common.rich_status import error_from_rpc
from tests.helpers.peer_fakes import FakeLedger, FakeLlm, conversations_of, per_user
from tests.helpers.polling import eventually
from tests.helpers.status import serving
from tests.threads.builders import (
    KEEP,
    PRUNE_AT,
    Stub,
    active_rows,
    cheap,
    drive_to_rotation,
    exchange,
    relayed_once,
    rid,
    turn_request,
)


async def test_concurrent_first_messages_make_one_conversation(
    stubs: list[Stub], llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    # The first turn stays in the upstream until all 20 are being served: they contend.
    llm.hold_next_turn_until = lambda: serving("RunStatefulTurn") >= 20
    requests = [turn_request(user_id, f"first message {i}") for i in range(20)]
    # Spread over two replicas of the service: the advisory lock serializes across them.
    results = await asyncio.gather(*(stubs[i % 2].RunStatefulTurn(r) for i, r in enumerate(requests)))
    assert all(r.created for r in results)
    assert len(per_user(llm.create_calls, user_id)) == 1
    conversation = per_user(llm.create_calls, user_id)[0]
    assert len(conversation.seed_turns) == 0
    assert {r.exchange.conversation_id for r in results} == {
        f"conv_{llm.create_calls.index(conversation) + 1}"}
    assert llm.max_per_user[user_id] == 1  # turns never overlapped
    assert max(llm.max_concurrency[c.id] for c in conversations_of(llm, user_id)) == 1
    assert await active_rows(db, user_id) == 1
    count = await stubs[0].CountMessages(pb.CountMessagesRequest(user_id=user_id))
    assert count.count == 20


async def test_retried_turn_returns_the_stored_answer(
    stubs: list[Stub], llm: FakeLlm, ledger: FakeLedger, user_id: str, db: asyncpg.Connection
) -> None:
    llm.hold_next_turn_until = lambda: serving("RunStatefulTurn") >= 4  # all four copies
    request = turn_request(user_id, "I keep skipping the gym", rid())
    results = await asyncio.gather(*(stubs[i % 2].RunStatefulTurn(request) for i in range(4)))
    again = await stubs[0].RunStatefulTurn(request)
    assert sum(r.created for r in results) == 1 and not again.created
    assert len({tuple(r.exchange.coach_texts) for r in [*results, again]}) == 1
    assert len([c for c in llm.turn_calls if c.request_id == request.request_id]) == 1
    assert await db.fetchval("SELECT count(*) FROM threads.exchanges WHERE request_id = $1",
                             request.request_id) == 1
    await eventually(lambda: relayed_once(db, request.request_id), what="the record relayed")
    assert ledger.deliveries[request.request_id] == 1
    assert ledger.records[request.request_id].route == types_pb2.ROUTE_ASSISTANT


async def test_exchanges_answered_elsewhere_are_back_filled_once(
    stub: Stub, llm: FakeLlm, user_id: str
) -> None:
    await stub.RecordExchange(exchange(user_id, "hey", "Morning! What's the plan?"))
    await stub.RunStatefulTurn(turn_request(user_id, "I want to run a 10k"))
    created = per_user(llm.create_calls, user_id)[0]
    # The first conversation is seeded with what came before it.
    assert [t.text for t in created.seed_turns] == ["hey", "Morning! What's the plan?"]
    await stub.RecordExchange(exchange(user_id, "thanks", "Anytime."))
    await stub.RecordExchange(cheap(user_id, "ran 3k today", "Nice! How did it feel?"))
    await stub.RunStatefulTurn(turn_request(user_id, "what should I do next week?"))
    await stub.RunStatefulTurn(turn_request(user_id, "ok and the week after?"))

    # They ride with the next turn (one upstream call), and only with that one.
    assert [a for a in llm.append_calls if a.conversation_id == created_conversation(llm, user_id)] == []
    turns = per_user(llm.turn_calls, user_id)
    assert [[t.text for t in call.prior_turns] for call in turns] == [
        [], ["thanks", "Anytime.", "ran 3k today", "Nice! How did it feel?"], []]
    conversation = conversations_of(llm, user_id)[0]
    assert [text for _, text in conversation.items] == [
        "hey", "Morning! What's the plan?",
        "I want to run a 10k", "coach: I want to run a 10k",
        "thanks", "Anytime.", "ran 3k today", "Nice! How did it feel?",
        "what should I do next week?", "coach: what should I do next week?",
        "ok and the week after?", "coach: ok and the week after?",
    ]
    view = await stub.GetConversation(pb.GetConversationRequest(user_id=user_id))
    assert view.generation == 1 and view.api == "responses"
    assert view.turns_in_window == len(conversation.items) - conversation.seed_size


async def test_more_unseen_than_one_call_takes_are_added_first_the_rest_ride_with_the_turn(
    stub: Stub, llm: FakeLlm, user_id: str
) -> None:
    # The baseline policy back-fills everything unseen (no summary, no pruning).
    await stub.RunStatefulTurn(turn_request(user_id, "first", baseline=True))
    batch = 60  # exchanges, two messages each: 120 unseen, more than one call's 100
    await stub.RecordExchanges(pb.RecordExchangesRequest(exchanges=[
        exchange(user_id, f"hi {i}", f"hello {i}").exchange for i in range(batch)]))
    await stub.RunStatefulTurn(turn_request(user_id, "second", baseline=True))
    conv = created_conversation(llm, user_id)
    appends = [a for a in llm.append_calls if a.conversation_id == conv]
    carried = per_user(llm.turn_calls, user_id)[-1].prior_turns
    assert [len(a.turns) for a in appends] == [100] and len(carried) == 20
    texts = [t.text for a in appends for t in a.turns] + [t.text for t in carried]
    assert texts == [text for i in range(batch) for text in (f"hi {i}", f"hello {i}")]
    view = await stub.GetConversation(pb.GetConversationRequest(user_id=user_id))
    assert view.turns_in_window == 2 + 2 * batch + 2  # every message, each once


def created_conversation(llm: FakeLlm, user_id: str) -> str:
    return conversations_of(llm, user_id)[0].id


async def test_save_goal_is_stored(stub: Stub, user_id: str, db: asyncpg.Connection) -> None:
    request = turn_request(user_id, "goal: run a half marathon",
                           message_type=types_pb2.MESSAGE_TYPE_GOAL_SETTING)
    await stub.RunStatefulTurn(request)
    row = await db.fetchrow("SELECT goal, deadline, request_id FROM threads.goals WHERE user_id = $1",
                            user_id)
    assert tuple(row) == ("run a half marathon", "2030-01-01", request.request_id)


async def test_upstream_failure_is_returned_and_nothing_stored(
    stub: Stub, llm: FakeLlm, user_id: str
) -> None:
    await stub.RunStatefulTurn(turn_request(user_id, "hello coach"))
    llm.failures["StatefulTurn"] = 100  # down (the channel retries UNAVAILABLE itself)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RunStatefulTurn(turn_request(user_id, "are you there?"))
    llm.failures.clear()
    code, reason, _ = error_from_rpc(err.value)
    assert (code, reason) == ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE")
    assert (await stub.CountMessages(pb.CountMessagesRequest(user_id=user_id))).count == 1


async def test_long_conversation_stays_bounded_and_history_complete(
    stub: Stub, llm: FakeLlm, ledger: FakeLedger, user_id: str, db: asyncpg.Connection
) -> None:
    texts: list[str] = []
    for i in range(120):
        if i % 7 == 3:
            request = exchange(user_id, f"canned {i}", f"canned reply {i}")
            await stub.RecordExchange(request)
            texts += [f"canned {i}", f"canned reply {i}"]
            continue
        await stub.RunStatefulTurn(turn_request(user_id, f"turn {i}"))
        texts += [f"turn {i}", f"coach: turn {i}"]
        conversations = conversations_of(llm, user_id)
        active = conversations[-1]
        # What the provider holds (seed + back-fill + turns) never exceeds the threshold.
        assert len(active.items) <= PRUNE_AT
        assert len(active.items) - active.seed_size >= 0
        assert await active_rows(db, user_id) == 1

    conversations = conversations_of(llm, user_id)
    assert len(conversations) >= 5
    for c in conversations[1:]:
        assert c.seed_size == KEEP and c.summary.startswith("summary of")
    # Incremental: each Summarize call folds only messages no earlier call folded.
    calls = per_user(llm.summarize_calls, user_id)
    folded = [t.text for call in calls for t in call.turns]
    assert len(folded) == len(set(folded))
    assert folded == texts[: len(folded)]
    folded_so_far = 0
    for call in calls:  # previous summary + only the newly dropped messages
        assert call.previous_summary == (f"summary of {folded_so_far} messages"
                                         if folded_so_far else "")
        assert len(call.turns) <= PRUNE_AT - KEEP + 2  # + a back-fill that did not fit
        folded_so_far += len(call.turns)
    last = conversations[-1]
    assert last.summary == f"summary of {len(folded)} messages"
    assert [t for _, t in last.items[:KEEP]] == texts[len(folded): len(folded) + KEEP]

    # Our own history lost nothing.
    listed = await stub.ListMessages(pb.ListMessagesRequest(user_id=user_id, page_size=500))
    assert [m.text for m in reversed(listed.messages)] == texts
    # Each summary is charged to the answer that caused it.
    await eventually(lambda: len(ledger.for_user(user_id)) == 120)
    summary_charges = [c for r in ledger.for_user(user_id) for c in r.charges
                       if c.purpose == "summary"]
    assert len(summary_charges) == len(calls)
    assert all(c.model == "gpt-5.4-mini" for c in summary_charges)
    view = await stub.GetConversation(pb.GetConversationRequest(user_id=user_id))
    assert view.generation == len(conversations)


async def test_baseline_never_prunes(stub: Stub, llm: FakeLlm, user_id: str) -> None:
    for i in range(30):
        await stub.RunStatefulTurn(turn_request(user_id, f"turn {i}", baseline=True))
    assert len(per_user(llm.create_calls, user_id)) == 1
    assert per_user(llm.summarize_calls, user_id) == []
    assert len(conversations_of(llm, user_id)[0].items) == 60
    assert all(c.all_tools for c in per_user(llm.turn_calls, user_id))


async def test_rotation_interrupted_by_a_failure_completes_later(
    stub: Stub, llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    await drive_to_rotation(stub, user_id)
    assert len(per_user(llm.create_calls, user_id)) == 1
    llm.failures["CreateConversation"] = 100
    failed = turn_request(user_id, "this one rotates")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RunStatefulTurn(failed)
    llm.failures.clear()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await active_rows(db, user_id) == 1
    # The router answers with a fallback: it carries the summary already paid for.
    fallback = exchange(user_id, "this one rotates", "Give me a second and try again?",
                        failed.request_id, route=types_pb2.ROUTE_FALLBACK,
                        message_type=types_pb2.MESSAGE_TYPE_DEEP_COACHING)
    recorded = await stub.RecordExchange(fallback)
    assert [c.purpose for c in recorded.exchange.charges] == ["summary"]

    done = await stub.RunStatefulTurn(turn_request(user_id, "next one"))
    assert done.created and await active_rows(db, user_id) == 1
    assert len(per_user(llm.create_calls, user_id)) >= 3
    assert len(conversations_of(llm, user_id)) == 2
    calls = per_user(llm.summarize_calls, user_id)
    assert [len(c.turns) for c in calls] == [20, 2]  # the retry folds only what is new
    assert [t.text for t in calls[1].turns] == ["turn 10", "coach: turn 10"]
    view = await stub.GetConversation(pb.GetConversationRequest(user_id=user_id))
    assert view.generation == 2 and view.summary == "summary of 22 messages"


async def test_a_dead_holders_expired_lease_does_not_block(
    stub: Stub, user_id: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        """INSERT INTO threads.turn_leases (user_id, holder, expires_at)
           VALUES ($1, 'crashed-replica', now() - interval '1 second')""",
        user_id,
    )
    done = await stub.RunStatefulTurn(turn_request(user_id, "after a crash"), timeout=5)
    assert done.created
    # Released once the turn is done.
    assert await db.fetchval(
        "SELECT count(*) FROM threads.turn_leases WHERE user_id = $1", user_id) == 0


async def test_a_live_lease_elsewhere_makes_the_turn_fail_within_its_deadline(
    stub: Stub, llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        """INSERT INTO threads.turn_leases (user_id, holder, expires_at)
           VALUES ($1, 'another-replica', now() + interval '1 hour')""",
        user_id,
    )
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RunStatefulTurn(turn_request(user_id, "blocked"), timeout=1.0)
        waited = asyncio.get_running_loop().time() - started
        code, reason, _ = error_from_rpc(err.value)
        # Threads' own answer, so before the deadline (past it the caller would have seen
        # DEADLINE_EXCEEDED), after waiting for the lease (a lower bound: waits never shrink).
        assert (code, reason) == ("UNAVAILABLE", "USER_TURN_BUSY")
        assert waited > 0.5
        assert per_user(llm.turn_calls, user_id) == [] and per_user(llm.create_calls, user_id) == []
        assert (await stub.CountMessages(pb.CountMessagesRequest(user_id=user_id))).count == 0
        assert await db.fetchval(
            "SELECT holder FROM threads.turn_leases WHERE user_id = $1", user_id
        ) == "another-replica"
    finally:
        await db.execute("DELETE FROM threads.turn_leases WHERE user_id = $1", user_id)
    assert (await stub.RunStatefulTurn(turn_request(user_id, "free again"), timeout=5)).created


async def test_a_turn_that_lost_its_lease_stores_nothing(
    stub: Stub, llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    """...but the upstream answer it paid for is owed by the user's next stored exchange."""
    await stub.RunStatefulTurn(turn_request(user_id, "hello"))
    llm.turn_gate = asyncio.Event()
    call = asyncio.ensure_future(stub.RunStatefulTurn(turn_request(user_id, "slow one")))
    await eventually(lambda: llm.active_per_user[user_id] == 1)
    # Another replica took over (as if ours had expired) while the upstream answered.
    assert await db.execute(
        "UPDATE threads.turn_leases SET holder = 'usurper' WHERE user_id = $1", user_id
    ) == "UPDATE 1"
    llm.turn_gate.set()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    code, reason, _ = error_from_rpc(err.value)
    assert (code, reason) == ("UNAVAILABLE", "TURN_LEASE_LOST")
    assert (await stub.CountMessages(pb.CountMessagesRequest(user_id=user_id))).count == 1
    # Not ours: left to its holder.
    assert await db.fetchval(
        "SELECT holder FROM threads.turn_leases WHERE user_id = $1", user_id) == "usurper"
    await db.execute("DELETE FROM threads.turn_leases WHERE user_id = $1", user_id)
    # The router's fallback for it carries the answer's charge: paid once, recorded once.
    fallback = await stub.RecordExchange(exchange(
        user_id, "slow one", "Give me a second and try again?",
        route=types_pb2.ROUTE_FALLBACK, message_type=types_pb2.MESSAGE_TYPE_DEEP_COACHING))
    owed = [c for c in fallback.exchange.charges if c.purpose == "unstored_turn"]
    assert len(owed) == 1 and owed[0].model == "gpt-5.4" and owed[0].usage.input_tokens > 0


async def test_many_users_turns_are_not_limited_by_a_connection_pool(
    stub: Stub, llm: FakeLlm
) -> None:
    llm.max_in_flight = 0
    # Each turn is held at the model until 21 are in flight at once: with turns capped by
    # the database pool (20) the gate would never open and 20 would be the most seen.
    llm.turn_gate_at = 21
    users = [f"many-{i}-{rid()[-8:]}" for i in range(60)]
    # All on one replica: its database pool (20) must not cap the turns in flight.
    results = await asyncio.gather(
        *(stub.RunStatefulTurn(turn_request(u, "first turn"), timeout=30) for u in users))
    llm.turn_gate_at = None
    assert all(r.created for r in results)
    assert llm.max_in_flight > 20
