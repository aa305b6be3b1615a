"""The whole suite in-process for the hardening tests, with stubs for every service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from coach.ledger.v1 import ledger_service_pb2_grpc
from coach.llm.v1 import llm_service_pb2_grpc
from coach.router.v1 import router_service_pb2_grpc
from coach.threads.v1 import threads_service_pb2_grpc

from tests.e2e.conftest import Suite, start_suite, stop_suite


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


MAX_MESSAGE_BYTES = 32 * 1024


@pytest.fixture(scope="module")
async def hardened(pg_url: str, offline_openai: Any) -> AsyncIterator[tuple[Suite, Stubs]]:
    """The suite with a deliberately set maximum request size (COACH_MAX_MESSAGE_BYTES)."""
    suite = await start_suite(pg_url, offline_openai,
                              {"COACH_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES)})
    stubs = stubs_for(suite)
    yield suite, stubs
    await stubs.close()
    await stop_suite(suite)
