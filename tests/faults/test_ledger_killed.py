"""The ledger SIGKILLed under load (50 users) and restarted by the supervisor: every answered
message reaches the ledger exactly once — nothing lost, nothing counted twice."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

from grpc import StatusCode

from tests.helpers.polling import eventually
from tests.helpers.processes import Load, process_suite
from tests.helpers.status import ledger_request_ids, recorded_in_ledger


async def test_ledger_killed_under_load_loses_and_doubles_nothing(pg_url: str, tmp_path: Path) -> None:
    prefix = f"lk-{uuid.uuid4().hex[:6]}-"
    async with process_suite(pg_url, tmp_path / "data", tmp_path / "logs") as suite:
        async with Load(suite.addresses["router"], prefix, users=50) as load:
            await eventually(lambda: len(load.outcomes) >= 50, timeout=60,
                             what="answers under load")
            victim = suite.services["ledger"].pid
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            answered_at_kill = len(load.outcomes)
            await eventually(lambda: suite.services["ledger"].pid not in (None, victim)
                             and suite.restarts["ledger"] >= 1,
                             timeout=30, what="the supervisor restarting the ledger")
            restarted_at = len(load.outcomes)
            # The load goes on against the restarted ledger.
            await eventually(lambda: len(load.outcomes) >= restarted_at + 100, timeout=60,
                             what="answers after the ledger's restart")
        ok = load.ok_ids()
        assert load.codes() == {"OK": len(load.outcomes)}, load.codes()  # chat never needs the ledger
        assert len(ok) > answered_at_kill > 0
        await recorded_in_ledger(pg_url, prefix, len(ok), timeout=30)
        ids = await ledger_request_ids(pg_url, prefix)
        assert len(ids) == len(set(ids)), "a record was counted twice"
        assert set(ids) == ok, (f"lost {len(ok - set(ids))}, unknown {len(set(ids) - ok)}")
        print(f"\nledger killed under load: {len(ok)} answers by 50 users, "
              f"{len(ok) - answered_at_kill} after the kill; ledger restarted "
              f"(restarts={suite.restarts['ledger']}); all {len(ids)} recorded once")
    assert load.outcomes and all(o.code == StatusCode.OK for o in load.outcomes)
