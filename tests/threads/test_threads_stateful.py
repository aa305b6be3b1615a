"""Stateful turns: one conversation per user, serialized, continuity, bounded context."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from coach.threads.v1 import threads_service_pb2 as pb
from coach.threads.v1 import threads_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2

from services.common.interceptors import error_from_rpc
from tests.threads.builders import cheap, exchange, rid, turn_request
from tests.threads.fakes import FakeConversation, FakeLedger, FakeLlm, conversations_of, per_user
from tests.threads.test_threads_exchanges import wait_for

Stub = pb_grpc.ThreadsServiceStub
KEEP, PRUNE_AT = 20, 40


async def active_rows(db: asyncpg.Connection, user_id: str) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM threads.conversations WHERE user_id = $1 AND status = 'active'",
        user_id))


async def test_concurrent_first_messages_make_one_conversation(
    stubs: list[Stub], llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    llm.turn_delay_s = 0.02
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
    llm.turn_delay_s = 0.05
    request = turn_request(user_id, "I keep skipping the gym", rid())
    results = await asyncio.gather(*(stubs[i % 2].RunStatefulTurn(request) for i in range(4)))
    again = await stubs[0].RunStatefulTurn(request)
    assert sum(r.created for r in results) == 1 and not again.created
    assert len({tuple(r.exchange.coach_texts) for r in [*results, again]}) == 1
    assert len([c for c in llm.turn_calls if c.request_id == request.request_id]) == 1
    assert await db.fetchval("SELECT count(*) FROM threads.exchanges WHERE request_id = $1",
                             request.request_id) == 1
    await wait_for(lambda: request.request_id in ledger.records)
    await asyncio.sleep(0.2)
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

    appends = [a for a in llm.append_calls if a.conversation_id == created_conversation(llm, user_id)]
    assert len(appends) == 1
    assert [t.text for t in appends[0].turns] == [
        "thanks", "Anytime.", "ran 3k today", "Nice! How did it feel?"]
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
    await wait_for(lambda: len(ledger.for_user(user_id)) == 120)
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


async def drive_to_rotation(stub: Stub, user_id: str) -> None:
    """20 turns: the conversation holds 40 messages, so the next turn rotates."""
    for i in range(PRUNE_AT // 2):
        await stub.RunStatefulTurn(turn_request(user_id, f"turn {i}"))


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


async def test_a_rotated_conversation_is_deleted_upstream(
    stub: Stub, llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    """The old provider conversation holds the user's messages and is never read again:
    deleted upstream after the rotation, retried while the llm service fails."""
    await drive_to_rotation(stub, user_id)
    old = per_user(llm.create_calls, user_id)
    assert len(old) == 1
    old_id = f"conv_{llm.create_calls.index(old[0]) + 1}"
    llm.failures["DeleteConversation"] = 2
    done = await stub.RunStatefulTurn(turn_request(user_id, "this one rotates"))
    assert done.exchange.conversation_id != old_id
    await wait_for(lambda: old_id in llm.deleted, timeout=10)
    assert llm.failures["DeleteConversation"] == 0  # failed twice, then deleted
    await wait_for_rows(db, user_id)
    assert done.exchange.conversation_id not in llm.deleted  # the active one stays


async def test_a_deletion_the_upstream_refuses_is_not_retried_and_holds_up_nothing(
    llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    refused, fine = f"conv_refused_{user_id}", f"conv_fine_{user_id}"
    llm.refuse_delete.add(refused)
    for provider_id in (refused, fine):  # archived in that order: the refused one comes first
        await db.execute(
            """INSERT INTO threads.conversations (user_id, provider_conversation_id, api, status,
                   archived_at) VALUES ($1, $2, 'responses', 'archived', now())""",
            user_id, provider_id)
    await wait_for(lambda: fine in llm.deleted, timeout=10)
    for _ in range(100):  # the row is marked once the llm service said it is gone
        rows = {r["provider_conversation_id"]: r for r in await db.fetch(
            """SELECT provider_conversation_id, upstream_deleted_at, upstream_delete_error
                 FROM threads.conversations WHERE user_id = $1""", user_id)}
        if rows[fine]["upstream_deleted_at"] is not None:
            break
        await asyncio.sleep(0.05)
    assert rows[refused]["upstream_deleted_at"] is None
    assert "refused" in rows[refused]["upstream_delete_error"]
    assert rows[fine]["upstream_deleted_at"] is not None
    tries = len([c for c in llm.delete_calls if c.conversation_id == refused])
    await asyncio.sleep(0.6)  # three more looks: the refused one is not asked again
    assert len([c for c in llm.delete_calls if c.conversation_id == refused]) == tries


async def wait_for_rows(db: asyncpg.Connection, user_id: str) -> None:
    for _ in range(100):
        rows = await db.fetch(
            """SELECT status, upstream_deleted_at IS NOT NULL AS deleted
                 FROM threads.conversations WHERE user_id = $1 ORDER BY id""", user_id)
        if [(r["status"], r["deleted"]) for r in rows] == [("archived", True), ("active", False)]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"conversation rows: {[dict(r) for r in rows]}")


async def rotation_held_at_create(stub: Stub, llm: FakeLlm, user_id: str,
                                  message: str) -> tuple[asyncio.Task[pb.RunStatefulTurnResponse], str]:
    """A rotating turn held while its new provider conversation is being created; that
    conversation's id (it exists once the gate opens)."""
    await drive_to_rotation(stub, user_id)
    llm.create_gate = asyncio.Event()
    llm.create_entered.clear()
    turn = asyncio.ensure_future(stub.RunStatefulTurn(turn_request(user_id, message)))
    await asyncio.wait_for(llm.create_entered.wait(), 5)
    return turn, f"conv_{len(llm.create_calls)}"


async def orphan_rows(db: asyncpg.Connection, user_id: str) -> list[str]:
    return [r["provider_conversation_id"] for r in await db.fetch(
        """SELECT provider_conversation_id FROM threads.orphaned_conversations
            WHERE user_id = $1""", user_id)]


async def test_a_conversation_whose_mapping_was_not_saved_is_deleted_upstream_later(
    stub: Stub, llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    """The rotation lost the user's turn lease while creating the new conversation: nothing
    maps it, but it holds the user's summary and seed turns upstream. It is noted, then
    deleted there once the grace period (0.5 s here) is over."""
    turn, created = await rotation_held_at_create(stub, llm, user_id, "this one loses its lease")
    active = await db.fetchval(
        """SELECT provider_conversation_id FROM threads.conversations
            WHERE user_id = $1 AND status = 'active'""", user_id)
    await db.execute("DELETE FROM threads.turn_leases WHERE user_id = $1", user_id)
    llm.create_gate.set()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await turn
    assert error_from_rpc(err.value)[:2] == ("UNAVAILABLE", "TURN_LEASE_LOST")
    assert await orphan_rows(db, user_id) == [created]
    await wait_for(lambda: created in llm.deleted, timeout=10)
    for _ in range(100):  # the note goes once the llm service said it is gone
        if not await orphan_rows(db, user_id):
            break
        await asyncio.sleep(0.05)
    assert await orphan_rows(db, user_id) == []
    assert active not in llm.deleted  # the mapping in place stays
    done = await stub.RunStatefulTurn(turn_request(user_id, "and again"))
    assert done.created and done.exchange.conversation_id not in (created, active)


async def test_a_conversation_that_lost_a_rotation_race_is_deleted_upstream_later(
    stub: Stub, llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    """Another rotation mapped the user's conversation meanwhile: the turn goes on in that
    one, and the conversation this rotation created is deleted upstream."""
    turn, created = await rotation_held_at_create(stub, llm, user_id, "this one loses a race")
    winner = f"conv_winner_{user_id}"
    llm.conversations[winner] = FakeConversation(winner, user_id, 0, "")
    await db.execute(
        """UPDATE threads.conversations SET status = 'archived', archived_at = now()
            WHERE user_id = $1 AND status = 'active'""", user_id)
    await db.execute(
        """INSERT INTO threads.conversations (user_id, provider_conversation_id, api, generation)
           VALUES ($1, $2, 'responses', 3)""", user_id, winner)
    llm.create_gate.set()
    done = await turn
    assert done.exchange.conversation_id == winner
    await wait_for(lambda: created in llm.deleted, timeout=10)
    assert winner not in llm.deleted


async def test_an_orphan_note_for_a_conversation_that_is_mapped_after_all_deletes_nothing(
    stub: Stub, llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    """A failure after the commit (its acknowledgement lost) notes a conversation that is
    mapped: the retirer drops the note and leaves the conversation alone."""
    done = await stub.RunStatefulTurn(turn_request(user_id, "hello"))
    mapped = done.exchange.conversation_id
    await db.execute(
        """INSERT INTO threads.orphaned_conversations (user_id, provider_conversation_id, api,
               created_at) VALUES ($1, $2, 'responses', now() - interval '1 hour')""",
        user_id, mapped)
    for _ in range(100):
        if not await orphan_rows(db, user_id):
            break
        await asyncio.sleep(0.05)
    assert await orphan_rows(db, user_id) == []
    await asyncio.sleep(0.3)
    assert mapped not in llm.deleted
    again = await stub.RunStatefulTurn(turn_request(user_id, "still here"))
    assert again.exchange.conversation_id == mapped


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
    await wait_for(lambda: any(r.request_id == done.exchange.request_id
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
    await asyncio.sleep(0.1)
    assert await active_rows(db, user_id) == 1
    llm.create_gate.set()  # the provider conversation gets created: the turn goes on
    llm.create_gate = None
    await wait_for(lambda: any(t.message == "cancelled while rotating"
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
    """A turn (after a first one) whose caller goes away while the upstream answers (0.3 s)."""
    await stub.RunStatefulTurn(turn_request(user_id, "hello"))
    llm.turn_delay_s = 0.3
    request = turn_request(user_id, message, rid())
    call = stub.RunStatefulTurn(request)
    await wait_for(lambda: llm.active_per_user[user_id] == 1)
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
    await wait_for(lambda: request.request_id in ledger.records)
    assert ledger.records[request.request_id].route == types_pb2.ROUTE_ASSISTANT
    again = await stub.RunStatefulTurn(request)
    assert not again.created and list(again.exchange.coach_texts) == [
        "coach: i keep skipping my runs"]
    assert len([c for c in llm.turn_calls if c.request_id == request.request_id]) == 1


async def test_a_turn_finished_after_the_callers_fallback_owes_its_charge(
    stub: Stub, llm: FakeLlm, user_id: str
) -> None:
    """The router answered with a fallback and stored it before the turn it gave up on was
    done: the turn's answer is not stored over it, and its charge goes on the next exchange."""
    request = await abandoned_turn(stub, llm, user_id, "slow one")
    fallback = await stub.RecordExchange(exchange(
        user_id, "slow one", "Give me a second and try again?", request.request_id,
        route=types_pb2.ROUTE_FALLBACK, message_type=types_pb2.MESSAGE_TYPE_DEEP_COACHING))
    assert fallback.created
    await wait_for(lambda: llm.active_per_user[user_id] == 0)
    await asyncio.sleep(0.1)  # the turn stores (or rather does not) and owes its charge
    llm.turn_delay_s = 0.0
    kept = await stub.RunStatefulTurn(request)
    assert not kept.created and kept.exchange.route == types_pb2.ROUTE_FALLBACK
    following = await stub.RecordExchange(exchange(user_id, "hey", "Morning!"))
    owed = [c for c in following.exchange.charges if c.purpose == "unstored_turn"]
    assert len(owed) == 1 and owed[0].model == "gpt-5.4" and owed[0].usage.input_tokens > 0


# --- the turn lease (serializes a user's turns across replicas, holds no connection) ----


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
        assert (code, reason) == ("UNAVAILABLE", "USER_TURN_BUSY")
        assert 0.5 < waited < 1.0  # it waited for the lease, then answered before the deadline
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
    llm.turn_delay_s = 0.3
    call = asyncio.ensure_future(stub.RunStatefulTurn(turn_request(user_id, "slow one")))
    await wait_for(lambda: llm.active_per_user[user_id] == 1)
    # Another replica took over (as if ours had expired) while the upstream answered.
    assert await db.execute(
        "UPDATE threads.turn_leases SET holder = 'usurper' WHERE user_id = $1", user_id
    ) == "UPDATE 1"
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
    llm.turn_delay_s = 0.3
    llm.max_in_flight = 0
    users = [f"many-{i}-{rid()[-8:]}" for i in range(60)]
    # All on one replica: its database pool (20) must not cap the turns in flight.
    results = await asyncio.gather(
        *(stub.RunStatefulTurn(turn_request(u, "first turn"), timeout=30) for u in users))
    assert all(r.created for r in results)
    assert llm.max_in_flight > 20
