"""Fixtures: the llm service in-process, speaking HTTP to the offline OpenAI server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import openai
import pytest
from coach.llm.v1 import llm_service_pb2_grpc

from tests.conftest import RunningService, start_service, stop_service


@dataclass
class Llm:
    service: RunningService
    stub: llm_service_pb2_grpc.LlmServiceStub
    channel: grpc.aio.Channel


def llm_env(upstream: Any, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "test",
        "COACH_SHUTDOWN_GRACE_SECONDS": "0.5",
        **extra,
    }


@asynccontextmanager
async def running_llm(upstream: Any, env: Mapping[str, str] | None = None) -> AsyncIterator[Llm]:
    service = await start_service("llm", {**llm_env(upstream), **(env or {})})
    channel = grpc.aio.insecure_channel(service.address)
    try:
        yield Llm(service, llm_service_pb2_grpc.LlmServiceStub(channel), channel)
    finally:
        await channel.close()
        await stop_service(service, grace=0.5)


@pytest.fixture(scope="session")
async def llm(offline_openai: Any) -> AsyncIterator[Llm]:
    """The llm service with default settings (Responses backend)."""
    async with running_llm(offline_openai) as running:
        yield running


@pytest.fixture(scope="session")
async def upstream_client(offline_openai: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    """A plain SDK client for the offline server, to look at what the service stored there."""
    client = openai.AsyncOpenAI(base_url=offline_openai.base_url, api_key="test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
def healthy_upstream(offline_openai: Any) -> Any:
    """Every test starts and ends with a healthy upstream."""
    offline_openai.faults.clear()
    yield
    offline_openai.faults.clear()
