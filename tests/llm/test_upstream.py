"""The cheap tier's Chat Completions request, both ways (through the SDK's pipeline, and
direct on aiohttp): what the SDK's ``create`` sends, read lightly, failing as the SDK fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import openai
import pytest
from aiohttp import web

from services.common.usage import Usage
from services.llm.cheap_tier import chat_model, chat_text, chat_usage
from services.llm.config import UpstreamSettings
from services.llm.resilience import FailureKind
from services.llm.upstream import (
    DirectChatCompletions,
    SdkChatCompletions,
    add_conversation_items,
    classify,
    create_chat_completion,
    create_client,
    create_conversation,
    create_response,
)
from tests.helpers.http_upstream import serving

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


def _tier_client(base_url: str, **extra: Any) -> openai.AsyncOpenAI:
    """The cheap tier's SDK client as the llm service makes it, for ``base_url``."""
    settings = UpstreamSettings(name="cheap", base_url=base_url, api_key="test-key",
                                default_model="gpt-5.4-mini", max_connections=4, max_keepalive=4)
    client = create_client(settings, 5.0)
    return client.with_options(**extra) if extra else client


def _client(upstream: Any, seen: list[httpx2.Request]) -> openai.AsyncOpenAI:
    """The same, against the offline server, remembering each request it sends in ``seen``."""
    client = _tier_client(upstream.base_url)

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
        service_tier=by_sdk.service_tier or "",
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


# -- the direct way (COACH_CHEAP_HTTP=direct) ------------------------------------------------

COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-5.4-mini-2026",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": " Nice run! "}}],
    "usage": {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43,
              "prompt_tokens_details": {"cached_tokens": 0}},
}


@asynccontextmanager
async def recording_upstream(
    answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """An HTTP server answering ``/v1/chat/completions`` with ``answer``; its base URL and
    what it received (path, headers, body)."""
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, {k.lower(): v for k, v in request.headers.items()},
                     await request.read()))
        return await answer(request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with serving(app) as origin:
        yield f"{origin}/v1", seen


async def test_direct_sends_what_the_sdk_sends_and_reads_the_same_answer() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response(COMPLETION)

    async with recording_upstream(ok) as (base_url, seen):
        client = _tier_client(base_url, organization="org-1", default_headers={"X-Team": "coach"})
        direct = DirectChatCompletions(client, 4)
        try:
            by_sdk = await SdkChatCompletions(client).create(dict(PARAMS), 5.0)
            by_direct = await direct.create(dict(PARAMS), 5.0)
            await client.chat.completions.create(timeout=5.0, **PARAMS)  # the SDK's own create
        finally:
            await direct.close()
            await client.close()
    (sdk_path, sdk_headers, sdk_body), (path, headers, body), (_, _, create_body) = seen
    assert path == sdk_path == "/v1/chat/completions"
    assert body == sdk_body == create_body  # byte for byte, non-ASCII text included
    telemetry = {"x-stainless-retry-count", "x-stainless-read-timeout"}
    transport = {"host", "content-length", "accept-encoding", "connection"}
    assert {k: v for k, v in headers.items() if k not in transport} == {
        k: v for k, v in sdk_headers.items() if k not in transport | telemetry}
    assert headers["authorization"] == "Bearer test-key"
    assert headers["openai-organization"] == "org-1" and headers["x-team"] == "coach"
    assert "openai-project" not in headers  # not set: not sent, as by the SDK
    assert by_direct == by_sdk == COMPLETION
    assert chat_text(by_direct) == "Nice run!" and chat_usage(by_direct) == Usage(40, 0, 3, 0)


async def _fail_both_ways(answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
                          timeout: float = 5.0, release: asyncio.Event | None = None,
                          ) -> tuple[BaseException, BaseException]:
    """Both ways of sending fail against ``answer``; ``release`` is set once they have (an
    answer that never comes waits on it, so the server can close)."""
    caught: list[BaseException] = []
    async with recording_upstream(answer) as (base_url, _):
        client = _tier_client(base_url)
        for way in (SdkChatCompletions(client), DirectChatCompletions(client, 4)):
            try:
                await way.create(dict(PARAMS), timeout)
            except Exception as exc:  # noqa: BLE001 - compared below
                caught.append(exc)
            else:
                raise AssertionError(f"{type(way).__name__} did not fail")
            finally:
                await way.close()
        await client.close()
        if release is not None:
            release.set()
    by_sdk, by_direct = caught
    return by_sdk, by_direct


@pytest.mark.parametrize("status,headers,kind,retry_after", [
    (429, {"retry-after": "3"}, FailureKind.RATE_LIMITED, 3.0),
    (429, {"retry-after-ms": "250"}, FailureKind.RATE_LIMITED, 0.25),
    (500, {}, FailureKind.SERVER_ERROR, None),
    (503, {"retry-after": "1"}, FailureKind.SERVER_ERROR, 1.0),
    (400, {}, FailureKind.REJECTED, None),
    (401, {}, FailureKind.AUTH, None),
    (404, {}, FailureKind.NOT_FOUND, None),
])
async def test_direct_failures_are_classified_as_the_sdks(
    status: int, headers: dict[str, str], kind: FailureKind, retry_after: float | None,
) -> None:
    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": f"nope {status}", "type": "x"}},
                                 status=status, headers=headers)

    by_sdk, by_direct = await _fail_both_ways(fail)
    assert isinstance(by_direct, openai.APIStatusError) and by_direct.status_code == status
    sdk_failure, direct_failure = classify(by_sdk), classify(by_direct)
    assert direct_failure == sdk_failure
    assert direct_failure is not None and direct_failure.kind is kind
    assert direct_failure.message == f"nope {status}"
    assert direct_failure.retry_after_s == retry_after


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[1, 2]", b""])
async def test_direct_answer_that_is_not_a_json_object_is_a_server_error(body: bytes) -> None:
    async def odd(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    by_sdk, by_direct = await _fail_both_ways(odd)
    assert isinstance(by_direct, openai.APIResponseValidationError)
    assert classify(by_direct) == classify(by_sdk)
    failure = classify(by_direct)
    assert failure is not None and failure.kind is FailureKind.SERVER_ERROR


async def test_direct_timeout_and_connection_failures() -> None:
    released = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await released.wait()  # no answer before both clients have given up
        return web.json_response(COMPLETION)

    by_sdk, by_direct = await _fail_both_ways(hang, timeout=0.2, release=released)
    assert isinstance(by_direct, openai.APITimeoutError)
    failure = classify(by_direct)
    assert failure is not None and failure.kind is FailureKind.TIMEOUT == classify(by_sdk).kind  # type: ignore[union-attr]

    async with recording_upstream(hang) as (base_url, _):
        pass  # the port is free again: nobody listens there
    client = _tier_client(base_url)
    direct = DirectChatCompletions(client, 4)
    try:
        with pytest.raises(openai.APIConnectionError) as caught:
            await direct.create(dict(PARAMS), 2.0)
    finally:
        await direct.close()
        await client.close()
    assert not isinstance(caught.value, openai.APITimeoutError)
    refused = classify(caught.value)
    assert refused is not None and refused.kind is FailureKind.CONNECTION and refused.retryable


async def test_direct_reuses_its_connection_and_closes() -> None:
    peers: set[object] = set()

    async def ok(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response(COMPLETION)

    async with recording_upstream(ok) as (base_url, seen):
        client = _tier_client(base_url)
        direct = DirectChatCompletions(client, 4)
        for _ in range(5):
            await direct.create(dict(PARAMS), 5.0)
        await direct.close()
        await direct.close()  # twice is harmless
        await client.close()
    assert len(seen) == 5 and len(peers) == 1  # one keep-alive connection for all five


def test_direct_takes_the_proxy_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    remote = DirectChatCompletions(openai.AsyncOpenAI(api_key="k"), 4)
    assert remote.url == "https://api.openai.com/v1/chat/completions"
    assert str(remote.proxy) == "http://proxy.test:3128"
    local = DirectChatCompletions(openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/v1"), 4)
    assert local.proxy is None


async def test_a_response_is_created_as_the_sdk_creates_it(offline_openai: Any) -> None:
    """The stateful tier's POST /responses skips the SDK's parameter transform: the same
    request (path, headers, JSON) and the same typed Response."""
    body: dict[str, Any] = {
        "model": "gpt-5.4", "instructions": "You are a coach. Été ✓",
        "input": [{"type": "message", "role": "user", "content": "I want to run a 10k"}],
        "tools": [{"type": "function", "name": "save_goal", "strict": True,
                   "parameters": {"type": "object", "properties": {"goal": {"type": "string"}},
                                  "required": ["goal"], "additionalProperties": False}}],
        "tool_choice": {"type": "allowed_tools", "mode": "auto",
                        "tools": [{"type": "function", "name": "save_goal"}]},
        "prompt_cache_key": "coach-stateful-0123", "prompt_cache_retention": "24h",
        "max_output_tokens": 300, "store": False, "text": {"verbosity": "low"},
    }
    seen: list[httpx2.Request] = []
    client = _client(offline_openai, seen)
    try:
        by_sdk = await client.responses.create(timeout=5.0, **body)
        direct = await create_response(client, dict(body), 5.0)
    finally:
        await client.close()
    sdk_request, direct_request = seen
    assert (direct_request.method, direct_request.url) == (sdk_request.method, sdk_request.url)
    assert json.loads(direct_request.content) == json.loads(sdk_request.content)
    volatile = {"x-stainless-retry-count", "x-stainless-read-timeout", "content-length"}
    assert {k: v for k, v in direct_request.headers.items() if k not in volatile} == {
        k: v for k, v in sdk_request.headers.items() if k not in volatile
    }
    assert isinstance(direct, type(by_sdk))
    assert direct.output_text == by_sdk.output_text
    assert [item.type for item in direct.output] == [item.type for item in by_sdk.output]
    assert direct.usage == by_sdk.usage


async def test_conversations_are_created_and_added_to_as_the_sdk_does_it(
        offline_openai: Any) -> None:
    """The stateful tier creates a conversation and adds items to it without the SDK's
    parameter transform or typed answers: the same requests, byte for byte in JSON."""
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "developer", "content": "Recap: wants a 10k. Été ✓"},
        {"type": "message", "role": "user", "content": "done ✅"},
        {"type": "message", "role": "assistant", "content": "Nice work!"},
    ]
    metadata = {"coach_user": "user-1"}
    seen: list[httpx2.Request] = []
    client = _client(offline_openai, seen)
    try:
        by_sdk = await client.conversations.create(items=items, metadata=metadata,  # type: ignore[arg-type]
                                                   timeout=5.0)
        direct_id = await create_conversation(client, {"items": items, "metadata": metadata},
                                              5.0)
        await client.conversations.items.create(by_sdk.id, items=items,  # type: ignore[arg-type]
                                                timeout=5.0)
        await add_conversation_items(client, by_sdk.id, items, 5.0)
    finally:
        await client.close()
    assert direct_id.startswith("conv_") and direct_id != by_sdk.id
    volatile = {"x-stainless-retry-count", "x-stainless-read-timeout", "content-length"}
    for sdk_request, direct_request in (seen[0:2], seen[2:4]):
        assert (direct_request.method, direct_request.url) == \
            (sdk_request.method, sdk_request.url)
        assert json.loads(direct_request.content) == json.loads(sdk_request.content)
        assert {k: v for k, v in direct_request.headers.items() if k not in volatile} == {
            k: v for k, v in sdk_request.headers.items() if k not in volatile}

