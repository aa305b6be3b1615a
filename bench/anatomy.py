"""Where a cheap-tier message's time goes, layer by layer, from both sides of every hop.

    bench client ──Chat──▶ router ──Complete──▶ llm ──POST /v1/chat/completions──▶ upstream

One user sends one text the router answers on the cheap tier, one call at a time. Every hop
is timed by its caller (the client, ``coach_peer_call_seconds``,
``coach_upstream_attempt_seconds``) and by its callee (``coach_rpc_latency_seconds``, the
offline server's own handling time), so the means telescope: the layers below add up to the
client's mean exactly.

    hop: bench client <-> router   client's Chat           - router's Chat (served)
    router's own work              router's Chat (served)  - router's Complete (called)
    hop: router <-> llm            router's Complete       - llm's Complete (served)
    llm's own work                 llm's Complete (served) - llm's upstream attempts
    the request over HTTP          llm's upstream attempts - the upstream's handling
    the upstream's handling        the offline server's time per request, from the request
                                   reaching its app to the answer being ready (its HTTP
                                   parsing and writing fall in the layer above)
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from coach.router.v1 import router_service_pb2, router_service_pb2_grpc
from coach.type.v1 import types_pb2

from bench.harness import BenchSuite, Histo, histo_delta, histograms
from bench.latency import HOUR, STREAK, cheap_texts

ENDPOINT = "POST /v1/chat/completions"


@dataclass(frozen=True)
class Snapshot:
    served: dict[tuple[str, str], Histo]
    called: dict[tuple[str, str], Histo]
    upstream: dict[tuple[str, str], Histo]
    handling_ms: float
    requests: int

    @classmethod
    async def take(cls, suite: BenchSuite) -> Snapshot:
        scraped, stats = await suite.scrape(), await suite.offline_stats()
        return cls(
            served=histograms(scraped, "coach_rpc_latency_seconds", "method"),
            called=histograms(scraped, "coach_peer_call_seconds", "method"),
            upstream=histograms(scraped, "coach_upstream_attempt_seconds", "api"),
            handling_ms=float(stats.get("handling_ms", {}).get(ENDPOINT, 0.0)),
            requests=int(stats.get("requests", {}).get(ENDPOINT, 0)),
        )


def _mean(delta: dict[tuple[str, str], Histo], key: tuple[str, str]) -> tuple[float, int]:
    h = delta.get(key)
    return (h.mean_ms, int(h.count)) if h is not None and h.count else (0.0, 0)


async def cheap_anatomy(suite: BenchSuite, calls: int) -> dict[str, Any]:
    """Sequential cheap-tier Chats, and the mean time of each layer. ``consistent`` is False
    when a call took another route or an upstream call was retried: the layers would then
    not be those of one cheap answer."""
    text = cheap_texts()[0]
    user = f"{suite.name}-anatomy-{uuid.uuid4().hex[:6]}"
    ctx = types_pb2.UserContext(display_name="Sam", current_streak=STREAK, local_hour=HOUR)
    router_ch = grpc.aio.insecure_channel(suite.address("router"))
    router = router_service_pb2_grpc.RouterServiceStub(router_ch)
    chat_ms: list[float] = []
    routes: dict[str, int] = {}

    async def chat(request_id: str) -> str:
        reply = await router.Chat(router_service_pb2.ChatRequest(
            user_id=user, message=text, request_id=request_id, context=ctx), timeout=5)
        return types_pb2.Route.Name(reply.route).removeprefix("ROUTE_")

    try:
        # Past onboarding (stateful), then a few unmeasured calls to warm the path.
        for i in range(8):
            await chat(f"{user}-warm-{i}")
        before = await Snapshot.take(suite)
        for _ in range(calls):
            t0 = time.perf_counter()
            route = await chat(uuid.uuid4().hex)
            chat_ms.append((time.perf_counter() - t0) * 1000)
            routes[route] = routes.get(route, 0) + 1
        after = await Snapshot.take(suite)
    finally:
        await router_ch.close()

    served = histo_delta(after.served, before.served)
    called = histo_delta(after.called, before.called)
    upstream = histo_delta(after.upstream, before.upstream)
    chat_served, chats = _mean(served, ("router", "Chat"))
    complete_called, completes_called = _mean(called, ("router", "Complete"))
    complete_served, completes = _mean(served, ("llm", "Complete"))
    attempt, attempts = _mean(upstream, ("llm", "chat.completions"))
    requests = after.requests - before.requests
    handling = (after.handling_ms - before.handling_ms) / requests if requests else 0.0
    client = statistics.fmean(chat_ms)
    layers = {
        "hop: bench client <-> router (gRPC)": client - chat_served,
        "router's own work": chat_served - complete_called,
        "hop: router <-> llm (gRPC)": complete_called - complete_served,
        "llm's own work": complete_served - attempt,
        "the upstream request over HTTP, both ends": attempt - handling,
        "the upstream's handling (offline server)": handling,
    }
    return {
        "text": text,
        "calls": calls,
        "routes": routes,
        "consistent": routes == {"COMPLETIONS": calls}
        and chats == completes_called == completes == attempts == requests == calls,
        "client_mean_ms": client,
        "client_p50_ms": statistics.median(chat_ms),
        "layers_ms": layers,
    }
