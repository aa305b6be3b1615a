"""What every store of the threads schema shares: row mapping, the turn lease's fence,
pending charges."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from services.common.errors import FailedPrecondition, Unavailable
from services.common.exchange import Exchange
from services.common.usage import Charge
from services.common.vocabulary import COACH, USER, MessageType, Role, Route
from services.threads.records import Conversation, HistoryMessage

ROLE_OF_DIRECTION: dict[str, Role] = {"in": USER, "out": COACH}

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool


class ConversationConflict(Exception):
    """The active conversation changed under us (another writer); nothing was written."""


@dataclass(frozen=True)
class TurnLease:
    """A user's turn lease (threads.turn_leases), owned while ``holder`` is ours and unexpired."""

    user_id: str
    holder: str


LEASE_HELD_SQL = """SELECT 1 FROM threads.turn_leases
                      WHERE user_id = $1 AND holder = $2 AND expires_at > now() FOR UPDATE"""


async def check_lease(conn: asyncpg.Connection, lease: TurnLease | None) -> None:
    """Fencing, inside the caller's transaction: the lease is still ours (and stays so
    until commit: the row is locked), else nothing is written."""
    if lease is None:
        return
    if await conn.fetchval(LEASE_HELD_SQL, lease.user_id, lease.holder) is None:
        raise lease_lost()


def lease_lost() -> Unavailable:
    return Unavailable("the user's turn lease expired or was taken over; nothing was stored",
                       reason="TURN_LEASE_LOST")



def request_id_reused() -> FailedPrecondition:
    """A request id already stored for another user's message: retrying cannot help."""
    return FailedPrecondition("request_id was already used for another user",
                              reason="REQUEST_ID_REUSED")


def exchange_from_row(row: asyncpg.Record | dict[str, Any]) -> Exchange:
    charges = row["charges"]
    if isinstance(charges, str):
        charges = json.loads(charges)
    created = row["created_at"]
    if isinstance(created, str):
        created = datetime.fromisoformat(created)
    return Exchange(
        request_id=row["request_id"],
        user_id=row["user_id"],
        user_text=row["user_text"],
        coach_texts=tuple(row["coach_texts"]),
        route=Route.from_proto_name(row["route"]),
        message_type=MessageType.from_proto_name(row["message_type"]),
        pattern=row["pattern"],
        model=row["model"],
        charges=tuple(Charge.from_json(c) for c in charges),
        conversation_id=row["conversation_id"],
        latency_ms=int(row["latency_ms"]),
        created_at=created,
    )


def conversation_from_row(row: asyncpg.Record) -> Conversation:
    return Conversation(
        id=row["id"],
        user_id=row["user_id"],
        provider_conversation_id=row["provider_conversation_id"],
        api=row["api"],
        status=row["status"],
        summary=row["summary"],
        summarized_through=row["summarized_through"],
        seen_through=row["seen_through"],
        seed_turns=row["seed_turns"],
        turns_in_window=row["turns_in_window"],
        generation=row["generation"],
        updated_at=row["updated_at"],
    )


def history_rows(rows: Sequence[asyncpg.Record]) -> list[HistoryMessage]:
    return [HistoryMessage(r["id"], ROLE_OF_DIRECTION[r["direction"]], r["text"]) for r in rows]



async def add_pending_charge(
    conn: asyncpg.Connection, user_id: str, request_id: str, charge: Charge
) -> None:
    """A charge paid upstream and not stored with an exchange yet: the user's next stored
    exchange takes it."""
    await conn.execute(
        """INSERT INTO threads.pending_charges (user_id, request_id, charge)
           VALUES ($1, $2, $3::jsonb)""",
        user_id, request_id, json.dumps(charge.to_json()),
    )
