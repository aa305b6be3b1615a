"""Faults (in-process and over HTTP), baseline latency, concurrency and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import openai
import pytest

from services.offline_openai import OfflineOpenAI, start_offline_openai
from tests.helpers.polling import eventually

ClientFactory = Callable[..., openai.AsyncOpenAI]
REPO = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "hi"}]


async def test_error_500(server: OfflineOpenAI, make_client: ClientFactory) -> None:
    client = make_client(max_retries=0)
    server.faults.set("error_500")
    with pytest.raises(openai.InternalServerError) as failed:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    assert failed.value.status_code == 500
    assert isinstance(failed.value.body, dict)
    assert failed.value.body["type"] == "server_error"
    server.faults.clear()
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]


async def test_error_429_with_retry_after(server: OfflineOpenAI, make_client: ClientFactory) -> None:
    client = make_client(max_retries=0)
    server.faults.set("error_429", retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.responses.create(model="gpt-4.1-mini", input="hi")
    assert limited.value.response.headers["retry-after"] == "7"
    assert isinstance(limited.value.body, dict)
    assert limited.value.body["code"] == "rate_limit_exceeded"


async def test_count_limited_fault_recovers(server: OfflineOpenAI, make_client: ClientFactory) -> None:
    client = make_client(max_retries=0)
    server.faults.set("error_500", count=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await client.responses.create(model="gpt-4.1-mini", input="hi")
    response = await client.responses.create(model="gpt-4.1-mini", input="hi")
    assert response.status == "completed"
    assert server.faults.plan.mode.value == "none"
    assert server.stats.faults_injected == 2


async def test_sdk_retries_through_a_counted_429(
    server: OfflineOpenAI, make_client: ClientFactory
) -> None:
    client = make_client(max_retries=2)
    server.faults.set("error_429", count=1, retry_after_s=0)
    response = await client.responses.create(model="gpt-4.1-mini", input="hi")
    assert response.output_text
    assert server.stats.requests["POST /v1/responses"] == 2


async def test_path_prefix_limits_the_fault(
    server: OfflineOpenAI, make_client: ClientFactory
) -> None:
    client = make_client(max_retries=0)
    server.faults.set("error_500", path_prefix="/v1/responses")
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    with pytest.raises(openai.InternalServerError):
        await client.responses.create(model="gpt-4.1-mini", input="hi")


async def test_hang_until_client_timeout_then_release(
    server: OfflineOpenAI, make_client: ClientFactory
) -> None:
    client = make_client(max_retries=0, timeout=0.5)
    server.faults.set("hang")
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    assert time.perf_counter() - started >= 0.45

    # A hung request is answered as soon as the fault is cleared.
    patient = make_client(max_retries=0, timeout=10)
    arrived = server.stats.requests["POST /v1/chat/completions"]
    pending = asyncio.create_task(
        patient.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    )
    await eventually(lambda: server.stats.requests["POST /v1/chat/completions"] > arrived,
                     what="the request reaching the hung server")
    assert not pending.done()
    server.faults.clear()
    completion = await asyncio.wait_for(pending, 5)
    assert completion.choices[0].message.content


async def test_latency_fault_and_baseline_latency(make_client: ClientFactory,
                                                  server: OfflineOpenAI) -> None:
    client = make_client(max_retries=0)
    server.faults.set("latency", latency_ms=200, count=1)
    started = time.perf_counter()
    await client.models.list()
    assert time.perf_counter() - started >= 0.19

    slow = await start_offline_openai(latency_ms=400)
    try:
        async with openai.AsyncOpenAI(base_url=slow.base_url, api_key="offline") as slow_client:
            started = time.perf_counter()
            await slow_client.responses.create(model="gpt-4.1-mini", input="hi")
            assert time.perf_counter() - started >= 0.39
    finally:
        await slow.close()


async def test_control_endpoints_over_http(server: OfflineOpenAI,
                                           make_client: ClientFactory) -> None:
    root = server.base_url.removesuffix("/v1")
    client = make_client(max_retries=0)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{root}/_control/faults",
                             json={"mode": "error_429", "retry_after": 3, "count": 1}) as set_:
            assert set_.status == 200
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
        assert limited.value.response.headers["retry-after"] == "3"
        completion = await client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
        assert completion.usage is not None
        async with http.get(f"{root}/_control/stats") as got:
            stats = await got.json()
        assert stats["requests"]["POST /v1/chat/completions"] == 2
        assert stats["statuses"] == {"429": 1, "200": 1}
        assert 0 < stats["handling_ms"]["POST /v1/chat/completions"] < 5000
        assert stats["model_calls"] == 1
        assert stats["input_tokens"] == completion.usage.prompt_tokens
        assert stats["output_tokens"] == completion.usage.completion_tokens
        async with http.post(f"{root}/_control/faults", json={"mode": "explode"}) as bad:
            assert bad.status == 400
            assert (await bad.json())["error"]["param"] == "mode"
        async with http.post(f"{root}/_control/reset") as reset:
            assert reset.status == 200
        assert server.stats.snapshot()["total_requests"] == 0
        async with http.post(f"{server.base_url}/chat/completions", data=b"{not json",
                             headers={"Content-Type": "application/json"}) as malformed:
            assert malformed.status == 400
            error = (await malformed.json())["error"]
            assert set(error) == {"message", "type", "param", "code"}
        async with http.get(f"{server.base_url}/nowhere") as unknown:
            assert unknown.status == 404
            assert (await unknown.json())["error"]["code"] == "not_found"


async def test_hundreds_of_concurrent_users(server: OfflineOpenAI,
                                            make_client: ClientFactory) -> None:
    client = make_client(max_retries=0, timeout=30)

    async def user(n: int) -> int:
        conversation = await client.conversations.create()
        response = await client.responses.create(
            model="gpt-4.1-mini",
            conversation=conversation.id,
            input=f"user {n}: I did my workout",
        )
        assert response.usage is not None
        return response.usage.input_tokens

    totals = await asyncio.gather(*(user(n) for n in range(300)))
    assert len(totals) == 300
    assert server.stats.model_calls == 300
    assert server.stats.statuses == {200: 600}  # every call answered, none refused


async def test_cli_serves_and_logs_json_lines(tmp_path: Path) -> None:
    env = dict(os.environ, OFFLINE_OPENAI_LATENCY_MS="5", OFFLINE_OPENAI_LOG_LEVEL="DEBUG")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.offline_openai", "--host", "127.0.0.1", "--port", "0",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stderr.readline(), 20)
        started = json.loads(line)
        assert started["event"] == "listening"
        assert started["latency_ms"] == 5
        async with openai.AsyncOpenAI(base_url=started["base_url"], api_key="offline") as client:
            completion = await client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
            assert completion.choices[0].message.content
        request_line = json.loads(await asyncio.wait_for(process.stderr.readline(), 5))
        assert request_line["route"] == "POST /v1/chat/completions"
        assert request_line["status"] == 200
        assert request_line["model"] == "gpt-4o-mini"
        assert request_line["input_tokens"] == completion.usage.prompt_tokens  # type: ignore[union-attr]
        assert request_line["request_id"].startswith("req_")
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
    assert process.returncode == 0
    assert process.stdout is not None
    assert await process.stdout.read() == b""
