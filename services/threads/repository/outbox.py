"""The ledger's outbox: records written with each stored exchange, relayed in batches."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from services.common.errors import CoachError
from services.common.exchange import AnswerRecord

log = logging.getLogger(__name__)


class OutboxStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def relay_outbox_batch(
        self, limit: int, send: Callable[[list[AnswerRecord]], Awaitable[None]]
    ) -> int:
        """Sends up to ``limit`` pending records and deletes them once ``send`` returns.

        The rows stay locked (FOR UPDATE SKIP LOCKED) in a transaction held across
        the call, so no other relay sends them meanwhile; should ``send`` fail,
        the transaction rolls back and the rows stay for the next attempt.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, record::text FROM threads.outbox ORDER BY id
                    LIMIT $1 FOR UPDATE SKIP LOCKED""",
                limit,
            )
            if not rows:
                return 0
            records = [AnswerRecord.from_json(json.loads(r["record"])) for r in rows]
            try:
                await send(records)
            except CoachError as exc:
                if exc.code != "INVALID_ARGUMENT":
                    raise
                # One record the ledger refuses must not block the others: send them one
                # by one (the ledger is idempotent) and set the refused ones aside.
                for row, record in zip(rows, records, strict=True):
                    try:
                        await send([record])
                    except CoachError as one:
                        if one.code != "INVALID_ARGUMENT":
                            raise
                        log.error("ledger refused an answer record; set aside",
                                  extra={"record_request_id": record.request_id,
                                         "error": one.message})
                        await conn.execute(
                            """INSERT INTO threads.outbox_rejected
                                   (id, request_id, record, error, created_at)
                               SELECT id, request_id, record, $2, created_at
                                 FROM threads.outbox WHERE id = $1
                               ON CONFLICT (id) DO NOTHING""",
                            row["id"], one.message,
                        )
            await conn.execute(
                "DELETE FROM threads.outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
            return len(rows)

    async def outbox_size(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM threads.outbox") or 0)
