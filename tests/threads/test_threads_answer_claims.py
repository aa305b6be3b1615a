"""BeginAnswer: a request id is claimed by one router at a time, across threads replicas;
the others get the stored answer, wait for it, or take over a claim its holder left to
expire (a dead router)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import asyncpg
import grpc
import pytest
from coach.threads.v1 import threads_service_pb2 as pb

from tests.helpers.polling import eventually
from tests.helpers.status import failure_of, serving
from tests.threads.builders import Stub, cheap, exchange, rid


def begin(user_id: str, request_id: str, holder: str, *, lease_ms: int = 20_000,
          wait_ms: int = 0, recent_turns: int = 0, token: str = "") -> pb.BeginAnswerRequest:
    return pb.BeginAnswerRequest(user_id=user_id, request_id=request_id, holder=holder,
                                 claim_token=token or uuid.uuid4().hex, lease_ms=lease_ms,
                                 wait_ms=wait_ms, recent_turns=recent_turns)


async def test_a_claimed_request_id_is_busy_for_others_then_answered(
        stubs: list[Stub], user_id: str) -> None:
    first, second = stubs
    request_id = rid()
    claimed = await first.BeginAnswer(begin(user_id, request_id, "router-a", recent_turns=6))
    assert not claimed.HasField("existing") and claimed.message_count == 0
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await second.BeginAnswer(begin(user_id, request_id, "router-b", wait_ms=50))
    assert failure_of(busy.value).reason == "REQUEST_IN_PROGRESS"
    assert busy.value.code() == grpc.StatusCode.UNAVAILABLE

    # the other replica waits for the answer, which router-a stores meanwhile
    waiting = asyncio.ensure_future(
        second.BeginAnswer(begin(user_id, request_id, "router-b", wait_ms=5000)))
    await eventually(lambda: serving("BeginAnswer") == 1, what="the waiting claim being served")
    assert not waiting.done()
    stored = cheap(user_id, "did my run", "Nice. How far?")
    stored.exchange.request_id = request_id
    await first.RecordExchange(stored)
    got = await asyncio.wait_for(waiting, 5)
    assert got.existing.coach_texts == ["Nice. How far?"]


async def test_a_dead_holders_claim_expires_and_is_taken_over(
        stubs: list[Stub], user_id: str) -> None:
    first, second = stubs
    request_id = rid()
    await first.BeginAnswer(begin(user_id, request_id, "router-dead", lease_ms=300))
    started = time.monotonic()
    taken = await second.BeginAnswer(begin(user_id, request_id, "router-b", wait_ms=5000))
    assert not taken.HasField("existing")
    assert 0.2 <= time.monotonic() - started < 3.0


async def test_an_abandoned_claim_is_free_at_once(stubs: list[Stub], user_id: str) -> None:
    first, second = stubs
    request_id, token = rid(), uuid.uuid4().hex
    await first.BeginAnswer(begin(user_id, request_id, "router-a", token=token))
    await first.AbandonAnswer(pb.AbandonAnswerRequest(request_id=request_id, claim_token=token))
    taken = await second.BeginAnswer(begin(user_id, request_id, "router-b"))
    assert not taken.HasField("existing")


async def test_a_claim_waits_for_the_users_earlier_answers_claimed_elsewhere(
        stubs: list[Stub], user_id: str) -> None:
    """Per-user order across routers: router-b's claim on the user's next message waits
    until router-a's answer to the previous one is stored, and then counts it."""
    first, second = stubs
    earlier = rid()
    await first.BeginAnswer(begin(user_id, earlier, "router-a"))
    later = asyncio.ensure_future(second.BeginAnswer(begin(user_id, rid(), "router-b",
                                                         wait_ms=5000, recent_turns=6)))
    await eventually(lambda: serving("BeginAnswer") == 1, what="the later claim being served")
    assert not later.done()
    stored = cheap(user_id, "did my run", "Nice. How far?")
    stored.exchange.request_id = earlier
    await first.RecordExchange(stored)
    state = await asyncio.wait_for(later, 5)
    assert state.message_count == 1 and [t.text for t in state.recent_turns] == [
        "did my run", "Nice. How far?"]


async def test_a_second_answer_to_an_answered_request_id_owes_its_charge(
        stubs: list[Stub], user_id: str, pg_url: str) -> None:
    """A claim taken over from a router that was only slow: both answered, both paid
    upstream. The first stored answer stands; the second one's charge is owed by the user's
    next exchange, so the ledger still matches the upstream bill."""
    first, second = stubs
    answer = cheap(user_id, "did my run", "Nice. How far?")
    await first.RecordExchange(answer)
    again = cheap(user_id, "did my run", "Great, what distance?")
    again.exchange.request_id = answer.exchange.request_id
    result = await second.RecordExchanges(pb.RecordExchangesRequest(exchanges=[again.exchange]))
    assert not result.results[0].created
    resent = await second.RecordExchanges(pb.RecordExchangesRequest(exchanges=[answer.exchange]))
    assert not resent.results[0].created  # the same answer sent again owes nothing
    conn = await asyncpg.connect(pg_url)
    try:
        owed = await conn.fetch(
            "SELECT charge->>'purpose' AS purpose FROM threads.pending_charges WHERE user_id = $1",
            user_id)
    finally:
        await conn.close()
    assert [r["purpose"] for r in owed] == ["duplicate_answer"]


async def test_a_restarted_router_gives_back_what_its_dead_process_claimed(
        stubs: list[Stub], user_id: str) -> None:
    """Same holder, the old process's token prefix: given back; the new process's claims and
    other routers' stay."""
    first, second = stubs
    # three users, so that no claim waits for another's (per-user order)
    stale, current, others = rid(), rid(), rid()
    users = {stale: user_id, current: f"{user_id}-2", others: f"{user_id}-3"}
    await first.BeginAnswer(begin(users[stale], stale, "router-h:/j", token="old1.a"))
    await first.BeginAnswer(begin(users[current], current, "router-h:/j", token="new1.b"))
    await first.BeginAnswer(begin(users[others], others, "router-x:/j", token="old1.c"))
    given = await second.AbandonStaleClaims(pb.AbandonStaleClaimsRequest(
        holder="router-h:/j", current_token_prefix="new1."))
    assert given.abandoned == 1
    taken = await second.BeginAnswer(begin(users[stale], stale, "router-b"))
    assert not taken.HasField("existing")
    for held in (current, others):
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await second.BeginAnswer(begin(users[held], held, "router-b"))
        assert failure_of(busy.value).reason == "REQUEST_IN_PROGRESS"


async def test_a_claim_gives_up_rather_than_store_out_of_order(
        stubs: list[Stub], user_id: str) -> None:
    """The other router's earlier answer is not stored by the caller's deadline (that router
    died with it in its journal): UNAVAILABLE, and the claim goes back for the retry."""
    first, second = stubs
    await first.BeginAnswer(begin(user_id, rid(), "router-a"))
    later = rid()
    with pytest.raises(grpc.aio.AioRpcError) as pending:
        await second.BeginAnswer(begin(user_id, later, "router-b", wait_ms=200))
    assert failure_of(pending.value).reason == "USER_ANSWERS_PENDING"
    # given back: another router may claim it at once (and wait in turn)
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await first.BeginAnswer(begin(user_id, later, "router-c", wait_ms=0))
    assert failure_of(again.value).reason == "USER_ANSWERS_PENDING"


async def owe(db: asyncpg.Connection, user_id: str, output_tokens: int) -> None:
    """Upkeep the user owes (as a summary or a fold leaves it)."""
    await db.execute(
        "INSERT INTO threads.pending_charges (user_id, request_id, charge) VALUES ($1, $2, $3)",
        user_id, rid(), json.dumps({"model": "gpt-5.4-mini", "purpose": "summary",
                                    "input_tokens": 500, "output_tokens": output_tokens}))


async def summary_tokens(db: asyncpg.Connection, request_id: str) -> list[int]:
    charges = json.loads(await db.fetchval(
        "SELECT charges::text FROM threads.exchanges WHERE request_id = $1", request_id))
    return [c["output_tokens"] for c in charges if c["purpose"] == "summary"]


async def test_owed_upkeep_is_reserved_by_the_claim_and_taken_by_its_answer_only(
        stubs: list[Stub], db: asyncpg.Connection, user_id: str) -> None:
    # The reply of a journaled answer reports what its claim reserved; the exchange stored
    # under that request id takes exactly that, so the ledger bills what the replies said.
    first, second = stubs
    await owe(db, user_id, 11)
    r1 = rid()
    begun = await first.BeginAnswer(begin(user_id, r1, "router-a"))
    assert [c.usage.output_tokens for c in begun.owed] == [11]
    await owe(db, user_id, 22)  # owed after the claim: not this answer's
    # a concurrent claim on the same request id elsewhere reserves nothing more
    with pytest.raises(grpc.aio.AioRpcError):
        await second.BeginAnswer(begin(user_id, r1, "router-b", wait_ms=0))
    stored = cheap(user_id, "did my run", "Nice.")
    stored.exchange.request_id = r1
    await first.RecordExchange(stored)
    assert await summary_tokens(db, r1) == [11]

    # The next claim reserves what was owed since; an abandoned claim frees its reservation.
    r2, r3 = rid(), rid()
    token = uuid.uuid4().hex
    begun = await second.BeginAnswer(begin(user_id, r2, "router-b", token=token))
    assert [c.usage.output_tokens for c in begun.owed] == [22]
    await second.AbandonAnswer(pb.AbandonAnswerRequest(request_id=r2, claim_token=token))
    begun = await first.BeginAnswer(begin(user_id, r3, "router-a"))
    assert [c.usage.output_tokens for c in begun.owed] == [22]
    stored = exchange(user_id, "thanks", "Anytime.", r3)
    await first.RecordExchange(stored)
    assert await summary_tokens(db, r3) == [22]
    assert await db.fetchval(
        "SELECT count(*) FROM threads.pending_charges WHERE user_id = $1", user_id) == 0

    # An answer stored without a claim (a router running without claims) takes what is owed.
    await owe(db, user_id, 33)
    unclaimed = exchange(user_id, "hey", "Hey!")
    await second.RecordExchange(unclaimed)
    assert await summary_tokens(db, unclaimed.exchange.request_id) == [33]
