"""Fixtures: an offline server on a free port and real `openai` SDK clients for it."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable

import openai
import pytest

from services.offline_openai import OfflineOpenAI, start_offline_openai

ClientFactory = Callable[..., openai.AsyncOpenAI]


@pytest.fixture(autouse=True)
def _quiet_assistants_deprecation() -> None:
    # The SDK marks the Assistants API deprecated; calling it is what we test.
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture
async def server() -> AsyncIterator[OfflineOpenAI]:
    started = await start_offline_openai()
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
async def make_client(server: OfflineOpenAI) -> AsyncIterator[ClientFactory]:
    clients: list[openai.AsyncOpenAI] = []

    def factory(**options: object) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="offline", **options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
def client(make_client: ClientFactory) -> openai.AsyncOpenAI:
    return make_client()
