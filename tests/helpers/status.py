"""What a call failed with (status, reason, bad fields), and what the suite stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc

from services.common.rich_status import error_from_rpc
from tests.helpers.polling import eventually


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    reason: str
    fields: tuple[str, ...]
    message: str


def failure_of(exc: grpc.aio.AioRpcError) -> Failure:
    """The status code, ErrorInfo reason and BadRequest fields of a failed call (decoded as
    every client decodes them: ``services.common.rich_status.error_from_rpc``)."""
    _, reason, violations = error_from_rpc(exc)
    return Failure(exc.code(), reason, tuple(v.field for v in violations), exc.details() or "")


async def call_failure(method: Any, request: Any, **kwargs: Any) -> Failure | None:
    """None when the call succeeded, else its Failure."""
    try:
        await method(request, **kwargs)
    except grpc.aio.AioRpcError as exc:
        return failure_of(exc)
    return None


async def stored_for_users(pg_url: str, user_prefix: str) -> dict[str, int]:
    """Rows anywhere in threads' or the ledger's tables for users whose id starts with the prefix."""
    like = user_prefix.replace("%", r"\%").replace("_", r"\_") + "%"
    conn = await asyncpg.connect(pg_url)
    try:
        counts = {}
        for table in ("threads.messages", "threads.exchanges", "threads.user_stats",
                      "threads.conversations", "answers"):
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
            counts[table] = (
                await conn.fetchval(f"SELECT count(*) FROM {table} WHERE user_id LIKE $1", like)
                if exists else 0
            )
        counts["threads.outbox"] = await conn.fetchval(
            "SELECT count(*) FROM threads.outbox WHERE record->>'user_id' LIKE $1 "
            "OR record->>'userId' LIKE $1", like
        )
        return counts
    finally:
        await conn.close()


async def ledger_request_ids(pg_url: str, user_prefix: str) -> list[str]:
    """request_ids of the ledger's answers for these users (with repeats, if any were double-counted)."""
    like = user_prefix.replace("%", r"\%").replace("_", r"\_") + "%"
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT request_id FROM answers WHERE user_id LIKE $1", like)
        return [r["request_id"] for r in rows]
    finally:
        await conn.close()


async def recorded_in_ledger(pg_url: str, user_prefix: str, count: int,
                             timeout: float = 30.0) -> list[str]:
    """The ledger's request_ids for these users once there are ``count`` (records travel by
    threads' outbox, a moment after the answers)."""

    async def ids() -> list[str] | None:
        found = await ledger_request_ids(pg_url, user_prefix)
        return found if len(found) >= count else None

    return await eventually(ids, timeout=timeout,
                            what=f"{count} ledger records for users {user_prefix}*")


def serving(method: str) -> int:
    """How many ``method`` calls the services running in this process are serving now
    (``coach_rpc_in_flight``): a call that should be waiting can be seen to be."""
    from prometheus_client import REGISTRY

    return int(REGISTRY.get_sample_value("coach_rpc_in_flight", {"method": method}) or 0)
