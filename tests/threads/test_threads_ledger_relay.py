"""The outbox relay: nothing lost while the ledger is down, nothing counted twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import asyncpg
from coach.threads.v1 import threads_service_pb2_grpc as pb_grpc
from prometheus_client import REGISTRY

from services.common.errors import Unavailable
from services.common.exchange import AnswerRecord
from services.threads.ledger_relay import LedgerRelay, RelaySettings
from tests.helpers.peer_fakes import FakeLedger
from tests.helpers.polling import eventually
from tests.threads.builders import cheap, exchange, rid

Stub = pb_grpc.ThreadsServiceStub


async def outbox_rows(db: asyncpg.Connection, request_ids: Sequence[str]) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM threads.outbox WHERE request_id = ANY($1::text[])", list(request_ids)))


async def outbox_drained(db: asyncpg.Connection, request_ids: Sequence[str]) -> None:
    """The rows go once the ledger acknowledged them (right after the ack, same transaction)."""

    async def drained() -> bool:
        return await outbox_rows(db, request_ids) == 0

    await eventually(drained, what="outbox rows gone after the ledger took them")


def backlog() -> float | None:
    return REGISTRY.get_sample_value("coach_ledger_backlog")


async def test_ledger_down_keeps_records_and_flushes_them_once_back(
    stubs: list[Stub], ledger: FakeLedger, user_id: str, db: asyncpg.Connection
) -> None:
    ledger.down = True
    ids = [rid() for _ in range(30)]
    for i, request_id in enumerate(ids):
        await stubs[i % 2].RecordExchange(exchange(user_id, f"hi {i}", "Hey!", request_id))
    calls_before = ledger.calls
    await eventually(lambda: ledger.calls >= calls_before + 2,
                     what="the relays trying again, with back-off")
    assert await outbox_rows(db, ids) == 30
    assert not any(r in ledger.records for r in ids)
    await eventually(lambda: (backlog() or 0) >= 30, what="the backlog gauge counting them")

    ledger.down = False
    await eventually(lambda: all(r in ledger.records for r in ids), what="every record relayed")
    await outbox_drained(db, ids)
    assert all(ledger.deliveries[r] == 1 for r in ids)


async def test_ledger_flapping_under_load_loses_nothing(
    stubs: list[Stub], ledger: FakeLedger, user_id: str, db: asyncpg.Connection
) -> None:
    ids = [rid() for _ in range(300)]

    async def writer(offset: int) -> None:
        for i in range(offset, len(ids), 6):
            request = cheap(user_id, f"message {i}", f"reply {i}")
            request.exchange.request_id = ids[i]
            await stubs[i % 2].RecordExchange(request)

    async def flapper() -> None:
        # Each state lasts until the relays have called the ledger twice in it.
        for _ in range(8):
            ledger.down = not ledger.down
            calls = ledger.calls
            await eventually(lambda calls=calls: ledger.calls >= calls + 2
                             or all(r in ledger.records for r in ids),
                             what="the relays calling the flapping ledger")
        ledger.down = False

    await asyncio.gather(*(writer(k) for k in range(6)), flapper())
    await eventually(lambda: all(r in ledger.records for r in ids), what="every record relayed")
    await outbox_drained(db, ids)
    # Two replicas relay the same outbox: a row is sent by one of them at a time.
    assert max(ledger.deliveries[r] for r in ids) == 1
    assert max(ledger.batch_sizes) <= 200


class _MemoryOutbox:
    """Just enough of the repository for the relay, in memory."""

    def __init__(self, records: int) -> None:
        self.rows = list(range(records))

    async def relay_outbox_batch(
        self, limit: int, send: Callable[[list[AnswerRecord]], object]
    ) -> int:
        batch = self.rows[:limit]
        if not batch:
            return 0
        await send([])  # type: ignore[misc]
        del self.rows[: len(batch)]
        return len(batch)

    async def outbox_size(self) -> int:
        return len(self.rows)


class _Ledger:
    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    async def record_answers(self, records: Sequence[AnswerRecord]) -> None:
        self.calls += 1
        if self.down:
            raise Unavailable("down")


async def test_shutdown_flushes_what_the_ledger_takes() -> None:
    outbox, ledger = _MemoryOutbox(450), _Ledger()
    relay = LedgerRelay(outbox, ledger, RelaySettings(batch_size=200, interval_s=0.01,  # type: ignore[arg-type]
                                                      backoff_s=0.01, max_backoff_s=0.05))
    relay.start()
    await eventually(lambda: ledger.calls >= 2, what="the relay trying while the ledger is down")
    assert len(outbox.rows) == 450
    ledger.down = False
    await relay.stop(flush_seconds=2)  # stops the loop first: the flush alone empties it
    assert outbox.rows == [] and backlog() == 0


async def test_shutdown_with_the_ledger_down_keeps_the_records() -> None:
    outbox, ledger = _MemoryOutbox(5), _Ledger()
    relay = LedgerRelay(outbox, ledger, RelaySettings(interval_s=0.01, backoff_s=0.01))  # type: ignore[arg-type]
    relay.start()
    await relay.stop(flush_seconds=0.5)
    assert len(outbox.rows) == 5


async def test_a_record_the_ledger_refuses_is_set_aside_and_blocks_nothing(
    stubs: list[Stub], ledger: FakeLedger, user_id: str, db: asyncpg.Connection
) -> None:
    ids = [rid() for _ in range(10)]
    ledger.refuse.add(ids[3])
    try:
        for i, request_id in enumerate(ids):
            await stubs[0].RecordExchange(exchange(user_id, f"hey {i}", "Hey!", request_id))
        good = [r for r in ids if r != ids[3]]
        await eventually(lambda: all(r in ledger.records for r in good))
        await outbox_drained(db, ids)
        assert ids[3] not in ledger.records
        assert all(ledger.deliveries[r] >= 1 for r in good) and len(ledger.records) >= 9
        rejected = await db.fetchval(
            "SELECT count(*) FROM threads.outbox_rejected WHERE request_id = $1", ids[3])
        assert rejected == 1  # kept, not lost
    finally:
        ledger.refuse.clear()
