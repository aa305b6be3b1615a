"""The cheap tier's direct Chat Completions call: what the SDK's ``create`` sends, read lightly."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest

from services.common.usage import Usage
from services.llm.cheap_tier import chat_model, chat_text, chat_usage
from services.llm.config import UpstreamSettings
from services.llm.resilience import FailureKind
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
    assert chat_text(direct) == (by_sdk.choices[0].message.content or "").strip() != ""
    assert chat_model(direct, "requested") == by_sdk.model
    assert by_sdk.usage is not None and by_sdk.usage.prompt_tokens_details is not None
    assert chat_usage(direct) == Usage(
        input_tokens=by_sdk.usage.prompt_tokens,
        cached_input_tokens=by_sdk.usage.prompt_tokens_details.cached_tokens or 0,
        output_tokens=by_sdk.usage.completion_tokens,
    )


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


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[1, 2]", b""])
async def test_an_answer_that_is_not_a_json_object_is_a_server_error(body: bytes) -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": "application/json"})

    client = openai.AsyncOpenAI(api_key="k", base_url="http://upstream.test/v1", max_retries=0,
                                http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(answer)))
    try:
        with pytest.raises(openai.APIResponseValidationError) as caught:
            await create_chat_completion(client, dict(PARAMS), 5.0)
    finally:
        await client.close()
    failure = classify(caught.value)
    assert failure is not None and failure.kind is FailureKind.SERVER_ERROR


def test_missing_fields_read_as_empty() -> None:
    assert chat_text({"choices": []}) == chat_text({"choices": [{"message": {"content": None}}]}) == ""
    assert chat_usage({"usage": None}) == chat_usage({}) == Usage()
    assert chat_usage({"usage": {"prompt_tokens": 7, "completion_tokens": 2,
                                 "prompt_tokens_details": None}}) == Usage(7, 0, 2, 0)
    assert chat_model({"model": ""}, "gpt-5.4-mini") == "gpt-5.4-mini"
