"""Fixtures: the llm service in-process, speaking HTTP to the offline OpenAI server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.helpers.services import Llm, running_llm


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
