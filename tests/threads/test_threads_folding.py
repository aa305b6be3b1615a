"""The background fold (services/threads/folding.py): messages that left the window are folded
into the summary after the reply, at the llm's background (flex) tier, so that a rotation on
the reply's path finds the summary up to date and summarizes nothing itself."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from coach.threads.v1 import threads_service_pb2_grpc

from tests.helpers.peer_fakes import FakeLedger, FakeLlm, conversations_of, per_user
from tests.helpers.polling import eventually
from tests.helpers.services import RunningService
from tests.threads.builders import KEEP, PRUNE_AT, Stub, turn_request

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
    for i in range(PRUNE_AT // 2):
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
