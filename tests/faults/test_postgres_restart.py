"""PostgreSQL restarted under load: the services reconnect; a message in the gap is answered or
gets a clear UNAVAILABLE; every OK answer is stored and reaches the ledger — none lost silently."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from services.offline_openai import start_offline_openai
from services.suite.postgres import EmbeddedPostgres
from tests.helpers.polling import eventually
from tests.helpers.processes import Load
from tests.helpers.status import ledger_request_ids, recorded_in_ledger
from tests.helpers.suite import start_suite, stop_suite


@pytest.fixture
async def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")) / "pgdata")
    await pg.start()
    yield pg
    await pg.stop()


async def stored_exchanges(url: str, prefix: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT request_id FROM threads.exchanges WHERE user_id LIKE $1",
                                prefix + "%")
    finally:
        await conn.close()
    return {r["request_id"] for r in rows}


@pytest.mark.parametrize("lockstep", [False, True], ids=["paced", "lockstep"])
async def test_postgres_restart_under_load(own_postgres: EmbeddedPostgres, lockstep: bool) -> None:
    url = own_postgres.url
    upstream: Any = await start_offline_openai(host="127.0.0.1", port=0)
    suite = await start_suite(url, upstream)
    prefix = f"pg-{uuid.uuid4().hex[:6]}-"
    try:
        async with Load(suite.services["router"].address, prefix, users=20, timeout=10,
                        lockstep=lockstep) as load:
            await eventually(lambda: len(load.ok_ids()) >= 40, what="the load under way")
            await own_postgres.stop()
            stopped = time.monotonic()
            # Down until 20 messages were sent into the outage.
            await eventually(lambda: sum(1 for o in load.outcomes if o.started > stopped) >= 20,
                             timeout=60, what="messages sent while the database is down")
            await own_postgres.start()
            gap = time.monotonic() - stopped
            restarted = len(load.outcomes)
            recovered = stopped + gap + 1.0
            # The load goes on until 40 messages sent a second after the restart are answered.
            await eventually(lambda: sum(1 for o in load.outcomes[restarted:]
                                         if o.started > recovered) >= 40,
                             timeout=60, what="messages answered after the restart")
        codes = load.codes()
        assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
        after = [o for o in load.outcomes[restarted:] if o.started > recovered]
        assert after and all(o.code == grpc.StatusCode.OK for o in after), load.codes()
        ok = load.ok_ids()

        # Answers outside the stateful tier reach threads through the router's journal,
        # a moment after the reply (longer while the database was down): wait for them.
        async def all_stored() -> bool:
            return ok <= await stored_exchanges(url, prefix)

        await eventually(all_stored, timeout=30, what=f"all {len(ok)} OK answers stored")
        await recorded_in_ledger(url, prefix, len(ok), timeout=30)
        ids = await ledger_request_ids(url, prefix)
        assert len(ids) == len(set(ids))
        assert ok <= set(ids), f"{len(ok - set(ids))} answered messages missing from the ledger"
        unavailable = [o for o in load.outcomes if o.code == grpc.StatusCode.UNAVAILABLE]
        print(f"\npostgres restart ({gap:.1f}s down): {codes}; "
              f"slowest UNAVAILABLE {max((o.elapsed for o in unavailable), default=0):.2f}s; "
              f"all {len(ok)} OK answers stored and in the ledger")
    finally:
        await stop_suite(suite)
        await upstream.close()
