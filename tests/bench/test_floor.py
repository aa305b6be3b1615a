"""The cheap tier's floor (bench/bare_health.py): two bare servers in a chain whose Check
makes one real Chat Completions request, by the openai SDK or by raw HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.bare_health import HTTP, SDK
from bench.harness import Floor
from tests.helpers.http_upstream import serving

COMPLETION = {
    "id": "chatcmpl-floor", "object": "chat.completion", "created": 1, "model": "gpt-5.4-mini",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Nice run!"}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
}


@asynccontextmanager
async def floor_over(handler: Callable[[web.Request], Awaitable[web.Response]]
                     ) -> AsyncIterator[health_pb2_grpc.HealthStub]:
    """A started floor whose upstream is ``handler``; a stub of its head."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with serving(app) as origin:
        floor = Floor(f"{origin}/v1")
        try:
            await floor.start()
            async with grpc.aio.insecure_channel(floor.address) as channel:
                yield health_pb2_grpc.HealthStub(channel)
        finally:
            await floor.stop()


async def test_a_floor_check_is_one_upstream_request_through_both_hops() -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    async def completions(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("authorization", ""),
                     json.loads(await request.read())))
        return web.json_response(COMPLETION)

    async with floor_over(completions) as stub:
        assert seen == []  # both servers answered Check("") at start-up without calling it
        for via in (SDK, HTTP):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=via), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert [path for path, _, _ in seen] == ["/v1/chat/completions"] * 2
    assert [auth for _, auth, _ in seen] == ["Bearer sk-floor"] * 2
    sdk_body, http_body = (body for _, _, body in seen)
    assert sdk_body == http_body  # the same request either way
    roles = [m["role"] for m in sdk_body["messages"]]
    assert roles[:2] == ["system", "system"] and roles[-1] == "user"
    assert len(roles) == 9  # persona, context line, six turns of history, the message
    assert sdk_body["model"] == "gpt-5.4-mini" and sdk_body["max_completion_tokens"] == 80


async def test_a_floor_check_fails_when_its_upstream_does() -> None:
    async def down(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "down"}}, status=500)

    async with floor_over(down) as stub:
        for via in (SDK, HTTP):
            try:
                await stub.Check(health_pb2.HealthCheckRequest(service=via), timeout=10)
            except grpc.aio.AioRpcError as err:
                assert err.code() is grpc.StatusCode.UNKNOWN
            else:
                raise AssertionError(f"{via}: a failed upstream call answered SERVING")
