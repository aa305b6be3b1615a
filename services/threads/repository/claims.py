"""Claims on request ids (threads.answer_claims): one answer per request id across every
router replica. One statement to claim, one to give a claim back, one to sweep old rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from services.common.exchange import Exchange
from services.common.usage import Charge
from services.threads.repository.rows import exchange_from_row, request_id_reused


@dataclass(frozen=True)
class ClaimAttempt:
    """What one claiming statement found."""

    # The stored answer, when the request id was already answered (nothing is claimed then).
    existing: Exchange | None
    # The caller holds the claim (taken now, renewed, or taken over from an expired holder).
    claimed: bool
    # The user's answers claimed by other holders and not stored yet (per-user order).
    claimed_elsewhere: int
    # Messages stored for the user.
    message_count: int
    # The user's owed upkeep, reserved for this request id when it was claimed: its answer
    # carries (and its reply reports) these charges.
    owed: tuple[Charge, ...] = ()


# One statement, its commit not waiting for the WAL flush (synchronous_commit off for this
# transaction only): a claim is visible to every replica as soon as it commits, and all a
# database crash can lose is claims of requests not answered yet, whose callers retry. That
# wait was most of what a claim cost a canned reply (p50 1.1 -> 4.8 ms with it).
# The claim is not taken when the answer is stored already; it is taken over
# only from the same attempt (renewal) or from an expired holder (a dead router). A claim
# whose answer is stored has expires_at = 'infinity' (set by the storing transaction) and is
# never taken over.
_CLAIM_SQL = """
WITH stored AS (
    SELECT to_jsonb(e)::text AS j FROM threads.exchanges e WHERE e.request_id = $2
), claim AS (
    INSERT INTO threads.answer_claims AS c (request_id, user_id, holder, token, expires_at)
    SELECT $2, $1, $3, $4, now() + $5::interval WHERE NOT EXISTS (SELECT 1 FROM stored)
        ON CONFLICT (request_id) DO UPDATE
       SET holder = EXCLUDED.holder, token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
     WHERE c.user_id = EXCLUDED.user_id
       AND (c.token = EXCLUDED.token OR c.expires_at < now())
    RETURNING c.token
), owed AS (
    UPDATE threads.pending_charges p SET reserved_for = $2
     WHERE p.user_id = $1 AND EXISTS (SELECT 1 FROM claim)
       AND (p.reserved_for IS NULL OR p.reserved_for = $2
            OR NOT EXISTS (SELECT 1 FROM threads.answer_claims r
                            WHERE r.request_id = p.reserved_for AND r.expires_at > now()))
    RETURNING p.id, p.charge
)
SELECT set_config('synchronous_commit', 'off', true) AS no_flush_wait,
       (SELECT jsonb_agg(charge ORDER BY id)::text FROM owed) AS owed,
       (SELECT j FROM stored) AS existing,
       EXISTS (SELECT 1 FROM claim) AS claimed,
       (SELECT count(*) FROM threads.answer_claims o
         WHERE o.user_id = $1 AND o.request_id <> $2 AND o.holder <> $3
           AND o.expires_at > now() AND o.expires_at < 'infinity') AS elsewhere,
       (SELECT s.message_count FROM threads.user_stats s WHERE s.user_id = $1) AS message_count
"""

# Run by the transaction that stores exchanges: their claims are answered for good.
CLAIMS_ANSWERED_SQL = """
UPDATE threads.answer_claims SET expires_at = 'infinity'
 WHERE request_id = ANY($1::text[]) AND expires_at < 'infinity'
"""


class ClaimStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(
        self, user_id: str, request_id: str, holder: str, token: str, lease_s: float
    ) -> ClaimAttempt:
        row = await self.pool.fetchrow(_CLAIM_SQL, user_id, request_id, holder, token,
                                       timedelta(seconds=lease_s))
        assert row is not None
        existing = exchange_from_row(json.loads(row["existing"])) if row["existing"] else None
        if existing is not None and existing.user_id != user_id:
            raise request_id_reused()
        owed = tuple(Charge.from_json(c) for c in json.loads(row["owed"])) if row["owed"] \
            else ()
        return ClaimAttempt(existing, bool(row["claimed"]), int(row["elsewhere"]),
                            int(row["message_count"] or 0), owed)

    async def abandon(self, request_id: str, token: str) -> None:
        """Gives an unanswered claim back (the caller refused the message)."""
        await self.pool.execute(
            """DELETE FROM threads.answer_claims
                WHERE request_id = $1 AND token = $2 AND expires_at < 'infinity'""",
            request_id, token)

    async def abandon_stale(self, holder: str, current_token_prefix: str) -> int:
        """Gives back the unanswered claims of ``holder`` not taken by its current process."""
        result = await self.pool.execute(
            """DELETE FROM threads.answer_claims
                WHERE holder = $1 AND NOT starts_with(token, $2) AND expires_at < 'infinity'""",
            holder, current_token_prefix)
        return int(result.split()[-1])

    async def sweep(self, older_than_s: float, limit: int = 10_000) -> int:
        """Deletes claims older than ``older_than_s`` (answered or expired long ago)."""
        result = await self.pool.execute(
            """DELETE FROM threads.answer_claims WHERE request_id IN (
                   SELECT request_id FROM threads.answer_claims
                    WHERE created_at < now() - $1::interval LIMIT $2)""",
            timedelta(seconds=older_than_s), limit)
        return int(result.split()[-1])
