"""The shared pool gives connections back without a round trip, and still undoes a
transaction left open."""

from __future__ import annotations

from services.common.db import create_pool


async def test_giving_a_connection_back_sends_nothing_and_keeps_no_transaction(
        pg_url: str) -> None:
    pool = await create_pool(pg_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            raw = conn._con  # type: ignore[attr-defined]  # the one pooled connection
            sent = raw._protocol.queries_count
        # asyncpg's default reset (advisory unlocks, CLOSE ALL, UNLISTEN, RESET ALL) would
        # have been one more statement on every release.
        assert raw._protocol.queries_count == sent

        async with pool.acquire() as conn:
            await conn.execute("BEGIN")  # left open, as a cancelled call might leave it
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await pool.close()
