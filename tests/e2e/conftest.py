"""The whole suite in-process: offline OpenAI server, ledger, llm, threads, router.

Services talk to each other over real gRPC on free ports, the llm service
talks to the offline server with the real ``openai`` SDK over HTTP, and
threads and ledger use a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from coach.ledger.v1 import ledger_service_pb2_grpc
from coach.router.v1 import router_service_pb2_grpc
from coach.threads.v1 import threads_service_pb2, threads_service_pb2_grpc

from tests.conftest import RunningService, start_service, stop_service


@dataclass
class Suite:
    services: dict[str, RunningService]
    channels: list[grpc.aio.Channel]
    router: router_service_pb2_grpc.RouterServiceStub
    threads: threads_service_pb2_grpc.ThreadsServiceStub
    ledger: ledger_service_pb2_grpc.LedgerServiceStub
    upstream: Any
    env: dict[str, str]


async def start_suite(pg_url: str, upstream: Any, extra: Mapping[str, str] | None = None) -> Suite:
    env: dict[str, str] = {
        "DATABASE_URL": pg_url,
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "offline",
        "COACH_SHUTDOWN_GRACE_SECONDS": "1",
        "COACH_LEDGER_FLUSH_INTERVAL_SECONDS": "0.05",
        **(extra or {}),
    }
    services: dict[str, RunningService] = {}
    for name in ("ledger", "llm", "threads", "router"):
        service = await start_service(name, env)
        services[name] = service
        env[f"COACH_{name.upper()}_ADDR"] = service.address
    router_ch = grpc.aio.insecure_channel(services["router"].address)
    threads_ch = grpc.aio.insecure_channel(services["threads"].address)
    ledger_ch = grpc.aio.insecure_channel(services["ledger"].address)
    return Suite(
        services=services,
        channels=[router_ch, threads_ch, ledger_ch],
        router=router_service_pb2_grpc.RouterServiceStub(router_ch),
        threads=threads_service_pb2_grpc.ThreadsServiceStub(threads_ch),
        ledger=ledger_service_pb2_grpc.LedgerServiceStub(ledger_ch),
        upstream=upstream,
        env=env,
    )


async def stored_messages(suite: Suite, user: str, count: int) -> list[str]:
    """All the user's stored texts (user and coach), oldest first, once there are ``count``.

    Answers outside the stateful tier reach threads through the router's
    write-behind journal: a moment after the reply, not before it.
    """
    texts: list[str] = []
    for _ in range(200):
        page = await suite.threads.ListMessages(
            threads_service_pb2.ListMessagesRequest(user_id=user, page_size=100))
        texts = [m.text for m in page.messages][::-1]
        if len(texts) >= count:
            return texts
        await asyncio.sleep(0.025)
    raise AssertionError(f"threads holds {len(texts)} messages for {user}, expected {count}")


async def stored_count(suite: Suite, user: str, expected: int) -> int:
    """The user's stored message count once it reaches ``expected`` (and stays there briefly)."""
    count = 0
    for _ in range(200):
        count = (await suite.threads.CountMessages(
            threads_service_pb2.CountMessagesRequest(user_id=user))).count
        if count >= expected:
            await asyncio.sleep(0.1)  # and no more arrive
            return int((await suite.threads.CountMessages(
                threads_service_pb2.CountMessagesRequest(user_id=user))).count)
        await asyncio.sleep(0.025)
    return int(count)


async def stop_suite(suite: Suite) -> None:
    for channel in suite.channels:
        await channel.close()
    for name in ("router", "threads", "llm", "ledger"):
        await stop_service(suite.services[name])


@pytest.fixture(scope="module")
async def suite(pg_url: str, offline_openai: Any) -> AsyncIterator[Suite]:
    running = await start_suite(pg_url, offline_openai)
    yield running
    await stop_suite(running)
