"""The cheap tier's direct Chat Completions call sends what the SDK's ``create`` sends."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest

from services.llm.config import UpstreamSettings
from services.llm.upstream import classify, create_chat_completion, create_client

PARAMS: dict[str, Any] = {
    "model": "gpt-5.4-mini",
    "messages": [
        {"role": "system", "content": "You are a coach. Été ✓"},
        {"role": "system", "content": "Sam, streak 5"},
        {"role": "user", "content": "I ran 5k"},
        {"role": "assistant", "content": "Nice. What's next?"},
        {"role": "user", "content": "reading tonight"},
    ],
    "max_completion_tokens": 120,
    "prompt_cache_key": "coach-cheap-0123456789abcdef",
    "temperature": 0.7,
}


def _client(upstream: Any, seen: list[httpx2.Request]) -> openai.AsyncOpenAI:
    settings = UpstreamSettings(name="cheap", base_url=upstream.base_url, api_key="test-key",
                                default_model="gpt-5.4-mini", max_connections=4, max_keepalive=4)
    client = create_client(settings, 5.0)

    async def remember(request: httpx2.Request) -> None:
        seen.append(request)

    client._client.event_hooks["request"].append(remember)
    return client


async def test_same_request_and_answer_as_the_sdk_create(offline_openai: Any) -> None:
    seen: list[httpx2.Request] = []
    client = _client(offline_openai, seen)
    try:
        by_sdk = await client.chat.completions.create(timeout=5.0, **PARAMS)
        direct = await create_chat_completion(client, dict(PARAMS), 5.0)
    finally:
        await client.close()
    sdk_request, direct_request = seen
    assert direct_request.method == sdk_request.method == "POST"
    assert direct_request.url == sdk_request.url
    assert direct_request.content == sdk_request.content
    volatile = {"x-stainless-retry-count", "x-stainless-read-timeout"}
    assert {k: v for k, v in direct_request.headers.items() if k not in volatile} == {
        k: v for k, v in sdk_request.headers.items() if k not in volatile
    }
    assert direct_request.headers["authorization"] == "Bearer test-key"
    assert type(direct) is type(by_sdk)
    assert direct.choices[0].message.content == by_sdk.choices[0].message.content
    assert direct.usage == by_sdk.usage


async def test_errors_are_the_sdk_errors(offline_openai: Any) -> None:
    seen: list[httpx2.Request] = []
    client = _client(offline_openai, seen)
    offline_openai.faults.set("error_429", count=1, path_prefix="/v1/chat/completions")
    try:
        with pytest.raises(openai.RateLimitError) as caught:
            await create_chat_completion(client, dict(PARAMS), 5.0)
    finally:
        offline_openai.faults.clear()
        await client.close()
    failure = classify(caught.value)
    assert failure is not None and failure.retryable and failure.status == 429
