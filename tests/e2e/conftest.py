"""The whole suite in-process: offline OpenAI server, ledger, llm, threads, router.

Services talk to each other over real gRPC on free ports, the llm service
talks to the offline server with the real ``openai`` SDK over HTTP, and
threads and ledger use a real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from coach.ledger.v1 import ledger_service_pb2_grpc
from coach.router.v1 import router_service_pb2_grpc
from coach.threads.v1 import threads_service_pb2_grpc

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
