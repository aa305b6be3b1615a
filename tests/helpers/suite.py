"""The whole suite in-process: offline OpenAI server, ledger, llm, threads, router.

Services talk to each other over real gRPC on free ports, the llm service talks to the
offline server with the real ``openai`` SDK over HTTP, and threads and ledger use a real
PostgreSQL. Answers outside the stateful tier reach threads through the router's
write-behind journal: a moment after the reply, so tests wait for what is stored
(``stored_messages``, ``stored_count``) instead of reading it at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from coach.ledger.v1 import ledger_service_pb2_grpc
from coach.llm.v1 import llm_service_pb2_grpc
from coach.router.v1 import router_service_pb2_grpc
from coach.threads.v1 import threads_service_pb2, threads_service_pb2_grpc
from prometheus_client import REGISTRY

from tests.helpers.polling import eventually
from tests.helpers.services import RunningService, start_service, stop_service

# Fault tests: route by the message from the first one on, a breaker that opens after 3
# failures and cools down in 2 s, quick retries.
BREAKER_COOLDOWN_S = 2.0
FAULT_ENV = {
    "COACH_ONBOARDING_MESSAGES": "0",
    "COACH_BREAKER_FAILURES": "3",
    "COACH_BREAKER_COOLDOWN_SECONDS": str(BREAKER_COOLDOWN_S),
    "COACH_RETRY_BASE_SECONDS": "0.05",
    "COACH_RETRY_MAX_SECONDS": "0.3",
}
# Hardening tests: a deliberately small maximum request size (COACH_MAX_MESSAGE_BYTES).
MAX_MESSAGE_BYTES = 32 * 1024


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


async def stored_messages(suite: Suite, user: str, count: int) -> list[str]:
    """All the user's stored texts (user and coach), oldest first, once there are ``count``."""

    async def texts() -> list[str] | None:
        page = await suite.threads.ListMessages(
            threads_service_pb2.ListMessagesRequest(user_id=user, page_size=100))
        found = [m.text for m in page.messages][::-1]
        return found if len(found) >= count else None

    return await eventually(texts, what=f"threads holding {count} messages for {user}")


async def stored_count(suite: Suite, user: str, expected: int) -> int:
    """The user's stored message count once it reaches ``expected`` and the router's journal
    is empty: every answer the router gave is stored by then, so no more can arrive."""

    async def settled() -> int | None:
        reply = await suite.threads.CountMessages(
            threads_service_pb2.CountMessagesRequest(user_id=user))
        return int(reply.count) if reply.count >= expected and journal_empty() else None

    return await eventually(settled, what=f"{expected} messages stored for {user}")


def journal_empty() -> bool:
    """Whether the router's journal has nothing left to send to threads (the gauge of the
    router that last answered in this process)."""
    return REGISTRY.get_sample_value("coach_router_journal_pending") == 0


@dataclass
class Stubs:
    router: router_service_pb2_grpc.RouterServiceStub
    threads: threads_service_pb2_grpc.ThreadsServiceStub
    llm: llm_service_pb2_grpc.LlmServiceStub
    ledger: ledger_service_pb2_grpc.LedgerServiceStub
    channels: list[grpc.aio.Channel]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def stubs_for(suite: Suite, open_channel: Any = grpc.aio.insecure_channel, **kwargs: Any) -> Stubs:
    """Stubs on channels of our own (``open_channel(address, **kwargs)``) to each service."""
    channels = {name: open_channel(suite.services[name].address, **kwargs)
                for name in ("router", "threads", "llm", "ledger")}
    return Stubs(
        router=router_service_pb2_grpc.RouterServiceStub(channels["router"]),
        threads=threads_service_pb2_grpc.ThreadsServiceStub(channels["threads"]),
        llm=llm_service_pb2_grpc.LlmServiceStub(channels["llm"]),
        ledger=ledger_service_pb2_grpc.LedgerServiceStub(channels["ledger"]),
        channels=list(channels.values()),
    )
