"""The background fold (services/threads/folding.py): messages that left the window are folded
into the summary after the reply, at the llm's background (flex) tier, and the conversation is
rotated then too (rotating ahead), so that no turn waits for a Summarize call or a new
conversation on the reply's path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from coach.threads.v1 import threads_service_pb2_grpc

from tests.helpers.peer_fakes import FakeLedger, FakeLlm, conversations_of, per_user
from tests.helpers.polling import eventually
from tests.helpers.services import RunningService
from tests.threads.builders import KEEP, PRUNE_AT, Stub, exchange, turn_request

pytestmark = pytest.mark.integration


@pytest.fixture
async def folding_stub(folding_threads: RunningService) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(folding_threads.address) as channel:
        yield threads_service_pb2_grpc.ThreadsServiceStub(channel)


async def folded_up_to_the_window(db: asyncpg.Connection, user_id: str) -> bool:
    """Every message older than the user's last KEEP is in the active conversation's summary
    (or there are none yet)."""
    row = await db.fetchrow(
        """SELECT c.summarized_through,
                  (SELECT m.id FROM threads.messages m WHERE m.user_id = $1
                    ORDER BY m.id DESC OFFSET $2 LIMIT 1) AS boundary
             FROM threads.conversations c WHERE c.user_id = $1 AND c.status = 'active'""",
        user_id, KEEP)
    return row is not None and row["summarized_through"] >= (row["boundary"] or 0)


async def test_old_messages_are_folded_after_the_reply_and_a_rotation_summarizes_nothing(
    folding_stub: Stub, llm: FakeLlm, ledger: FakeLedger, db: asyncpg.Connection, user_id: str
) -> None:
    texts: list[str] = []
    for i in range(PRUNE_AT // 2 + 6):  # past the first rotation
        await folding_stub.RunStatefulTurn(turn_request(user_id, f"turn {i}"))
        texts += [f"turn {i}", f"coach: turn {i}"]
        await eventually(lambda: folded_up_to_the_window(db, user_id),
                         what=f"the fold after turn {i}")

    conversations = conversations_of(llm, user_id)
    assert len(conversations) >= 2  # a rotation happened ...
    calls = per_user(llm.summarize_calls, user_id)
    assert calls and all(call.background for call in calls)  # ... and summarized nothing itself
    # Each message folded once, oldest first, each call carrying the summary so far.
    folded = [t.text for call in calls for t in call.turns]
    assert folded == texts[: len(folded)]
    assert len(folded) == len(texts) - KEEP
    # The rotated conversation was seeded with the summary of all that left the window.
    assert conversations[-1].summary.startswith("summary of")
    # Each fold is paid once, at the flex tier: owed by the user's next stored answer (the
    # last fold's by an answer still to come).
    await eventually(lambda: len(ledger.for_user(user_id)) == len(texts) // 2)
    charges = [c for r in ledger.for_user(user_id) for c in r.charges if c.purpose == "summary"]
    owed = await db.fetchval(
        "SELECT count(*) FROM threads.pending_charges WHERE user_id = $1", user_id)
    assert len(charges) + owed == len(calls) and owed <= 1
    assert {c.usage.service_tier for c in charges} == {"flex"}


async def test_a_fold_refused_for_capacity_leaves_its_messages_to_the_rotation(
    folding_stub: Stub, llm: FakeLlm, user_id: str
) -> None:
    llm.refuse_background = True
    texts: list[str] = []
    # No fold, so no rotation ahead: the turn rotates itself at the backstop, two windows
    # past the limit.
    for i in range((PRUNE_AT + 2 * KEEP) // 2):
        refused = llm.refused_background
        await folding_stub.RunStatefulTurn(turn_request(user_id, f"turn {i}"))
        texts += [f"turn {i}", f"coach: turn {i}"]
        if 2 * (i + 1) > KEEP:  # messages left the window: a fold was tried, and refused
            await eventually(lambda refused=refused: llm.refused_background > refused,
                             what=f"the refused fold after turn {i}")
    await folding_stub.RunStatefulTurn(turn_request(user_id, "the turn that rotates"))
    texts += ["the turn that rotates", "coach: the turn that rotates"]

    conversations = conversations_of(llm, user_id)
    assert len(conversations) == 2
    # The rotation folded, on the reply's path, everything older than its seed, once.
    calls = per_user(llm.summarize_calls, user_id)
    assert calls and not any(call.background for call in calls)
    folded = [t.text for call in calls for t in call.turns]
    assert folded == texts[: len(texts) - 2 - KEEP]
    assert conversations[-1].summary == f"summary of {len(folded)} messages"


async def held_within_the_window(db: asyncpg.Connection, user_id: str) -> bool:
    """The user's active conversation holds at most the window: rotated ahead after the last
    reply, or not full yet."""
    held = await db.fetchval(
        """SELECT seed_turns + turns_in_window FROM threads.conversations
            WHERE user_id = $1 AND status = 'active'""", user_id)
    return held is not None and held <= KEEP


async def active_provider_id(db: asyncpg.Connection, user_id: str) -> str:
    return str(await db.fetchval(
        """SELECT provider_conversation_id FROM threads.conversations
            WHERE user_id = $1 AND status = 'active'""", user_id))


async def test_a_full_window_is_rotated_after_the_reply_so_no_turn_waits_for_a_rotation(
    folding_stub: Stub, llm: FakeLlm, db: asyncpg.Connection, user_id: str
) -> None:
    texts: list[str] = []
    for i in range(KEEP // 2 + 8):
        if i % 3 == 2:  # a canned exchange between turns: the next turn carries it
            await folding_stub.RecordExchange(exchange(user_id, f"hi {i}", f"hello {i}"))
            texts += [f"hi {i}", f"hello {i}"]
        await folding_stub.RunStatefulTurn(turn_request(user_id, f"turn {i}"))
        texts += [f"turn {i}", f"coach: turn {i}"]
        await eventually(lambda: held_within_the_window(db, user_id),
                         what=f"the rotation ahead after turn {i}")

    creates = per_user(llm.create_calls, user_id)
    assert len(creates) >= 5
    # The first conversation was made on a turn's path; every later one after a reply ...
    assert not creates[0].request_id.startswith("ahead:")
    assert all(c.request_id.startswith("ahead:") for c in creates[1:])
    # ... from a summary folded after a reply: no turn summarized or created anything.
    assert all(call.background for call in per_user(llm.summarize_calls, user_id))
    # Each turn ran on the window, what came since and itself: never more.
    for call in per_user(llm.turn_calls, user_id):
        assert len(llm.conversations[call.conversation_id].items) <= KEEP + 4 + 2 + 2
    # The whole story, once and in order: the summary, then the seed of the last rotation.
    active = llm.conversations[await active_provider_id(db, user_id)]
    assert active.summary == f"summary of {len(texts) - KEEP} messages"
    assert [text for _, text in active.items] == texts[-KEEP:]
    # Every conversation rotated away is deleted upstream.
    await eventually(lambda: {c.id for c in conversations_of(llm, user_id)} - {active.id}
                     <= llm.deleted, what="the rotated conversations deleted")


async def test_a_rotation_ahead_gives_way_to_a_running_turn(
    folding_stub: Stub, llm: FakeLlm, db: asyncpg.Connection, user_id: str
) -> None:
    texts: list[str] = []
    for i in range(KEEP // 2):  # the window is full, not over: nothing to rotate yet
        await folding_stub.RunStatefulTurn(turn_request(user_id, f"turn {i}"))
        texts += [f"turn {i}", f"coach: turn {i}"]
    old = await active_provider_id(db, user_id)
    llm.create_entered.clear()
    llm.create_gate = asyncio.Event()
    llm.turn_gate = asyncio.Event()
    try:
        llm.turn_gate.set()
        await folding_stub.RunStatefulTurn(turn_request(user_id, "over the window"))
        texts += ["over the window", "coach: over the window"]
        await llm.create_entered.wait()  # the rotation ahead is creating its conversation
        llm.turn_gate.clear()
        running = asyncio.ensure_future(
            folding_stub.RunStatefulTurn(turn_request(user_id, "a turn meanwhile")))
        await eventually(lambda: llm.active_per_user[user_id] == 1,
                         what="the next turn in the upstream, holding the user's lease")
        blocked = per_user(llm.create_calls, user_id)[-1]
        ahead = f"conv_{llm.create_calls.index(blocked) + 1}"  # the fake's naming
        llm.create_gate.set()  # the rotation ahead finds the lease taken ...
        await eventually(lambda: db.fetchval(
            "SELECT count(*) FROM threads.orphaned_conversations WHERE provider_conversation_id = $1",
            ahead), what="the conversation made ahead noted for deletion")
        llm.turn_gate.set()
        await running
        texts += ["a turn meanwhile", "coach: a turn meanwhile"]
    finally:
        llm.create_gate = None
        llm.turn_gate = None
    # ... so the running turn kept its conversation, with the whole story in it, and the
    # one made ahead was never the user's.
    assert per_user(llm.turn_calls, user_id)[-1].conversation_id == old
    assert [t for _, t in llm.conversations[old].items] == texts
    assert await db.fetchval("SELECT count(*) FROM threads.conversations "
                             "WHERE provider_conversation_id = $1", ahead) == 0
    await eventually(lambda: ahead in llm.deleted, what="the orphan deleted upstream")
    # The next reply rotates ahead again.
    await folding_stub.RunStatefulTurn(turn_request(user_id, "and on"))
    await eventually(lambda: held_within_the_window(db, user_id), what="the rotation ahead")
