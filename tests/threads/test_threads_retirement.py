"""Provider conversations no longer used are deleted upstream: those a rotation archived,
and those a rotation created but could not map (orphans), after a grace period."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import grpc
import pytest
from coach.threads.v1 import threads_service_pb2 as pb

from services.common.rich_status import error_from_rpc
from tests.helpers.peer_fakes import FakeConversation, FakeLlm, per_user
from tests.helpers.polling import eventually
from tests.threads.builders import (
    Stub,
    drive_to_rotation,
    turn_request,
)


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
    await eventually(lambda: old_id in llm.deleted)
    assert llm.failures["DeleteConversation"] == 0  # failed twice, then deleted
    await rotated_rows(db, user_id)
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
    await eventually(lambda: fine in llm.deleted)

    async def marked() -> dict[str, Any] | None:  # once the llm service said it is gone
        rows = {r["provider_conversation_id"]: r for r in await db.fetch(
            """SELECT provider_conversation_id, upstream_deleted_at, upstream_delete_error
                 FROM threads.conversations WHERE user_id = $1""", user_id)}
        return rows if rows[fine]["upstream_deleted_at"] is not None else None

    rows = await eventually(marked, what="the deleted conversation marked")
    assert rows[refused]["upstream_deleted_at"] is None
    assert "refused" in rows[refused]["upstream_delete_error"]
    tries = len([c for c in llm.delete_calls if c.conversation_id == refused])
    # Later passes of the retirers (archived after it, so looked at after it) delete others
    # and do not ask for the refused one again.
    for n in range(3):
        later = f"conv_later_{n}_{user_id}"
        await db.execute(
            """INSERT INTO threads.conversations (user_id, provider_conversation_id, api, status,
                   archived_at) VALUES ($1, $2, 'responses', 'archived', now())""",
            user_id, later)
        await eventually(lambda later=later: later in llm.deleted, what=f"{later} deleted")
    assert len([c for c in llm.delete_calls if c.conversation_id == refused]) == tries


async def rotated_rows(db: asyncpg.Connection, user_id: str) -> None:
    """The user's conversation rows: the archived one marked deleted upstream, the active one not."""

    async def rows() -> list[tuple[str, bool]]:
        return [(r["status"], r["deleted"]) for r in await db.fetch(
            """SELECT status, upstream_deleted_at IS NOT NULL AS deleted
                 FROM threads.conversations WHERE user_id = $1 ORDER BY id""", user_id)]

    async def settled() -> bool:
        return await rows() == [("archived", True), ("active", False)]

    await eventually(settled, what="an archived row marked deleted and an active one")


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


async def no_orphans(db: asyncpg.Connection, user_id: str) -> bool:
    return not await orphan_rows(db, user_id)


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
    await eventually(lambda: created in llm.deleted)
    await eventually(lambda: no_orphans(db, user_id),  # once the llm service said it is gone
                     what="the orphan note gone")
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
    await eventually(lambda: created in llm.deleted)
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
    await eventually(lambda: no_orphans(db, user_id), what="the note dropped")
    # Gone for good: every retirer pass drops mapped notes before it picks orphans to delete.
    assert mapped not in llm.deleted
    again = await stub.RunStatefulTurn(turn_request(user_id, "still here"))
    assert again.exchange.conversation_id == mapped


async def test_a_pass_deletes_many_conversations_at_once(
    llm: FakeLlm, user_id: str, db: asyncpg.Connection
) -> None:
    """One deletion at a time kept up with ~3 rotations a second at a 300 ms upstream; a
    pass now has several in flight (each waits here until three are)."""
    ids = [f"conv_many_{i}_{user_id}" for i in range(3)]
    llm.delete_gate_at = 3
    try:
        await db.execute(  # one statement: the retirer's pass sees all three or none
            """INSERT INTO threads.conversations (user_id, provider_conversation_id, api, status,
                   archived_at)
               SELECT $1, unnest($2::text[]), 'responses', 'archived', now()""", user_id, ids)
        await eventually(lambda: set(ids) <= llm.deleted, what="the three deleted")
    finally:
        llm.delete_gate_at = None
    assert llm.max_deletes_in_flight >= 3
