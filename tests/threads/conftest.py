"""Threads service tests: two replicas of the real service on one PostgreSQL database,
with in-process fakes of the llm service and the ledger."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from coach.threads.v1 import threads_service_pb2_grpc

from services.common.server import CoachServer
from tests.helpers.peer_fakes import FakeLedger, FakeLlm, serve_fake
from tests.helpers.services import RunningService, fresh_database, start_service, stop_service


@pytest.fixture(scope="session")
async def pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """The threads tests' own database. Their two replicas run for the whole session and
    relay the outbox to a fake ledger: in a shared database they would take the records
    of other folders' suites."""
    async with fresh_database(pg_admin_url, "coach_threads") as url:
        yield url


@pytest.fixture(scope="session")
async def fake_llm() -> AsyncIterator[tuple[FakeLlm, CoachServer]]:
    llm = FakeLlm()
    server = await serve_fake("llm", llm)
    yield llm, server
    await server.stop(0.1)


@pytest.fixture(scope="session")
async def fake_ledger() -> AsyncIterator[tuple[FakeLedger, CoachServer]]:
    ledger = FakeLedger()
    server = await serve_fake("ledger", ledger)
    yield ledger, server
    await server.stop(0.1)


def _threads_env(pg_url: str, llm_port: int, ledger_port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": pg_url,
        "COACH_LLM_ADDR": f"127.0.0.1:{llm_port}",
        "COACH_LEDGER_ADDR": f"127.0.0.1:{ledger_port}",
        "COACH_THREADS_RELAY_INTERVAL_SECONDS": "0.05",
        "COACH_THREADS_RELAY_MAX_BACKOFF_SECONDS": "0.2",
        "COACH_THREADS_LEDGER_TIMEOUT_SECONDS": "2",
        "COACH_THREADS_FLUSH_SECONDS": "2",
        "COACH_THREADS_RETIRE_INTERVAL_SECONDS": "0.2",
        "COACH_THREADS_ORPHAN_GRACE_SECONDS": "0.5",
        # The pruning tests work with a window of their own (test_threads_stateful.KEEP,
        # PRUNE_AT), whatever the service's default is.
        "COACH_PRUNE_KEEP_MESSAGES": "20",
        "COACH_PRUNE_AT_MESSAGES": "40",
        # ... and rotate as soon as it is full (the cache-aware rule: test_threads_domain).
        "COACH_PRUNE_CACHE_COLD_SECONDS": "0",
        # Rotations summarize on their own here, so the tests of rotation see every summary
        # call; the background fold has a replica of its own (test_threads_folding).
        "COACH_FOLD_AFTER_REPLY": "false",
    }


@pytest.fixture(scope="session")
async def folding_threads(
    pg_url: str,
    fake_llm: tuple[FakeLlm, CoachServer],
    fake_ledger: tuple[FakeLedger, CoachServer],
) -> AsyncIterator[RunningService]:
    """A threads replica that folds old messages into the summary after each reply."""
    env = _threads_env(pg_url, fake_llm[1].port, fake_ledger[1].port)
    env["COACH_FOLD_AFTER_REPLY"] = "true"
    env["COACH_FOLD_MIN_MESSAGES"] = "2"  # a fold after every turn (the default: a rotation's worth)
    service = await start_service("threads", env)
    yield service
    await stop_service(service)


@pytest.fixture(scope="session")
async def threads_pair(
    pg_url: str,
    fake_llm: tuple[FakeLlm, CoachServer],
    fake_ledger: tuple[FakeLedger, CoachServer],
) -> AsyncIterator[tuple[RunningService, RunningService]]:
    env = _threads_env(pg_url, fake_llm[1].port, fake_ledger[1].port)
    first = await start_service("threads", env)
    second = await start_service("threads", env)
    yield first, second
    await stop_service(second)
    await stop_service(first)


@pytest.fixture(scope="session")
async def threads_channels(
    threads_pair: tuple[RunningService, RunningService],
) -> AsyncIterator[list[grpc.aio.Channel]]:
    channels = [grpc.aio.insecure_channel(s.address) for s in threads_pair]
    yield channels
    for channel in channels:
        await channel.close()


@pytest.fixture
def stub(threads_channels: list[grpc.aio.Channel]) -> threads_service_pb2_grpc.ThreadsServiceStub:
    return threads_service_pb2_grpc.ThreadsServiceStub(threads_channels[0])


@pytest.fixture
def stubs(
    threads_channels: list[grpc.aio.Channel],
) -> list[threads_service_pb2_grpc.ThreadsServiceStub]:
    return [threads_service_pb2_grpc.ThreadsServiceStub(c) for c in threads_channels]


@pytest.fixture
async def db(pg_url: str, threads_pair: object) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


@pytest.fixture
def llm(fake_llm: tuple[FakeLlm, CoachServer]) -> AsyncIterator[FakeLlm]:
    fake = fake_llm[0]
    fake.failures.clear()
    fake.turn_gate = None
    fake.hold_next_turn_until = None
    fake.create_gate = None
    fake.refuse_background = False
    yield fake  # type: ignore[misc]
    fake.failures.clear()
    fake.turn_gate = None
    fake.hold_next_turn_until = None
    fake.create_gate = None
    fake.refuse_background = False


@pytest.fixture
def ledger(fake_ledger: tuple[FakeLedger, CoachServer]) -> AsyncIterator[FakeLedger]:
    fake = fake_ledger[0]
    fake.down = False
    yield fake  # type: ignore[misc]
    fake.down = False


@pytest.fixture
def user_id() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"
