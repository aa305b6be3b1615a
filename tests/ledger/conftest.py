"""Fixtures: a ledger served in-process on a free port, on the session's real PostgreSQL.

Tests share one database, so each writes on its own UTC days or its own user
ids and asserts on those only (records.py builds what they send).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from coach.ledger.v1 import ledger_service_pb2_grpc as pb_grpc

from tests.helpers.services import RunningService, start_service, stop_service
from tests.ledger.records import BUDGET_USD


@pytest.fixture(scope="session")
async def ledger(pg_url: str) -> AsyncIterator[RunningService]:
    service = await start_service("ledger", {
        "DATABASE_URL": pg_url,
        "COACH_USER_DAILY_BUDGET_USD": BUDGET_USD,
        "COACH_BASELINE_OUTPUT_TOKENS": "60",
    })
    yield service
    await stop_service(service)


@pytest.fixture(scope="session")
async def stub(ledger: RunningService) -> AsyncIterator[pb_grpc.LedgerServiceStub]:
    async with grpc.aio.insecure_channel(ledger.address) as channel:
        yield pb_grpc.LedgerServiceStub(channel)
