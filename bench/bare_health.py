"""Bare grpc.aio servers: the bench's yardstick, and the floor of the cheap tier's path.

``python -m bench.bare_health --port P`` serves grpc.health.v1.Health (SERVING) on
127.0.0.1:P and nothing else: no interceptors, no reflection, no logging. Router.Chat
is compared with a Check on this server, made with the same client code in the same run.

The floor: the cheap tier's path with none of the suite's code on it. Two more bare
servers stand where the router and the llm service stand:

    bench client -> --forward ADDR (Check forwards the request to ADDR)
                 -> --upstream URL (Check sends one Chat Completions request to URL)

The tail's Check sends a cheap-tier-shaped request (the persona, a context line, six
turns of history, the message) for the service names ``openai-sdk`` (through the SDK's
request pipeline, with the llm service's own SDK client and ``create_chat_completion``: its
way with ``COACH_CHEAP_HTTP=sdk``) and ``aiohttp`` (one raw POST of the same JSON, as its
default way sends it, without the headers and error handling around it); for any other name
it answers at once. A Check of the head with
one of those names is the path a cheap-tier Chat takes, two gRPC hops and one HTTP
exchange with the same upstream, at zero work of our own: what the suite's cheap tier
could at best be on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from services.llm.cheap_tier import prompt_cache_key
from services.llm.config import DATA_DIR, UpstreamSettings
from services.llm.persona import load_persona
from services.llm.turns import Audience
from services.llm.upstream import create_chat_completion, create_client

SDK, HTTP = "openai-sdk", "aiohttp"
SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
HISTORY = (
    ("user", "i want to get fit this year"),
    ("assistant", "Love that. What does fit look like for you by summer?"),
    ("user", "mornings work best for me"),
    ("assistant", "Great, mornings it is. A 20-minute run three days a week to start?"),
    ("user", "ok, starting tomorrow"),
    ("assistant", "Deal. Tell me how the first one goes!"),
)


def cheap_request(model: str = "gpt-5.4-mini") -> dict[str, Any]:
    """A request shaped as ``CheapTier.complete`` shapes a check-in's."""
    coach = load_persona(DATA_DIR / "persona.yaml").coach
    messages = [{"role": "system", "content": coach},
                {"role": "system", "content": Audience("Sam", 5).context_line()}]
    messages += [{"role": role, "content": text} for role, text in HISTORY]
    messages.append({"role": "user", "content": "did my run this morning, felt decent"})
    return {"model": model, "messages": messages, "max_completion_tokens": 80,
            "prompt_cache_key": prompt_cache_key("cheap", coach), "temperature": 0.8}


class Forward(health_pb2_grpc.HealthServicer):
    """Check: the same request, answered by the next server."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.next = health_pb2_grpc.HealthStub(self.channel)

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        return await self.next.Check(request, timeout=context.time_remaining())

    async def close(self) -> None:
        await self.channel.close()


class Upstream(health_pb2_grpc.HealthServicer):
    """Check: one Chat Completions request, by the SDK or by raw HTTP (the service name)."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.client = create_client(
            UpstreamSettings(name="cheap", base_url=base_url, api_key="sk-floor",
                             default_model="gpt-5.4-mini", max_connections=64, max_keepalive=64),
            call_timeout_s=10.0)
        self.body = cheap_request()
        self.headers = {"authorization": "Bearer sk-floor", "content-type": "application/json"}
        self.http: aiohttp.ClientSession | None = None

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        if request.service == SDK:
            await create_chat_completion(self.client, self.body, 10.0)
        elif request.service == HTTP:
            if self.http is None:
                self.http = aiohttp.ClientSession()
            async with self.http.post(self.url, data=json.dumps(self.body).encode(),
                                      headers=self.headers) as resp:
                resp.raise_for_status()
                json.loads(await resp.read())
        return SERVING

    async def close(self) -> None:
        await self.client.close()
        if self.http is not None:
            await self.http.close()


async def serve(port: int, forward: str | None, upstream: str | None) -> None:
    server = grpc.aio.server()
    role: Forward | Upstream | None = None
    if forward:
        role = Forward(forward)
    elif upstream:
        role = Upstream(upstream)
    if role is not None:
        health_pb2_grpc.add_HealthServicer_to_server(role, server)
    else:
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    if role is not None:
        await role.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--forward", metavar="ADDR", help="Check forwards to this gRPC server")
    role.add_argument("--upstream", metavar="URL",
                      help="Check sends one Chat Completions request to this base URL")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.forward, args.upstream))


if __name__ == "__main__":
    main()
