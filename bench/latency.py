"""Router.Chat next to a bare grpc.aio health check: same client code, interleaved A/B.

Single-call latency: rounds of a few sequential calls per target, targets in a
shuffled order each round, so drift (other processes, CPU frequency, the database
warming up) hits every target alike; medians and their ratios are reported.
Throughput: closed-loop workers for a short slice per target, slices interleaved.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from coach.router.v1 import router_service_pb2, router_service_pb2_grpc
from coach.type.v1 import types_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.bare_health import HTTP as FLOOR_HTTP
from bench.bare_health import SDK as FLOOR_SDK
from bench.replay import percentile
from services.router.decision import MessageContext, Route, Router

CANNED_TEXTS = ("hey", "good morning", "morning coach", "hi", "yo", "hello", "gm", "hey coach")
CHEAP_CANDIDATES = (
    "did my run this morning, felt decent",
    "got my workout done at lunch today",
    "quick update: 20 minutes of reading done before work",
    "checking in, today was alright, got the walk in",
    "small win: did 15 min of yoga even though i was tired",
    "how many rest days should i take per week?",
    "is it better to do my run in the morning or at night?",
    "got my study block done at lunch today",
)
HOUR, STREAK = 9, 5
EXPECTED_ROUTE = {"health": "", "canned": "PATTERN", "cheap": "COMPLETIONS", "floor_sdk": "",
                  "floor_http": ""}


def cheap_texts() -> tuple[str, ...]:
    """Candidates the router (in-process, same data files) sends to the cheap tier."""
    router = Router.from_files()
    ctx = MessageContext(display_name="Sam", current_streak=STREAK, local_hour=HOUR, timezone="",
                         message_count=10, history=(), last_canned_reply="")
    picked = tuple(t for t in CHEAP_CANDIDATES if router.decide(t, ctx).route is Route.COMPLETIONS)
    return picked or CHEAP_CANDIDATES


Call = Callable[[], Awaitable[str]]


@dataclass
class Targets:
    """One zero-argument call per target; each returns the route it got ("" for health)."""

    calls: dict[str, Call]
    channels: list[grpc.aio.Channel]

    async def close(self) -> None:
        for c in self.channels:
            await c.close()


async def make_targets(router_addr: str, health_addr: str, users: int, tag: str,
                       floor_addr: str | None = None) -> Targets:
    """Same client code for all: a grpc.aio channel and a unary call with a 5 s timeout.

    With ``floor_addr`` (a ``harness.Floor``), two more: the cheap tier's path with no suite
    code, its upstream call made by the openai SDK (``floor_sdk``) or by raw HTTP
    (``floor_http``)."""
    health_ch = grpc.aio.insecure_channel(health_addr)
    router_ch = grpc.aio.insecure_channel(router_addr)
    health = health_pb2_grpc.HealthStub(health_ch)
    router = router_service_pb2_grpc.RouterServiceStub(router_ch)
    check = health_pb2.HealthCheckRequest(service="")
    ids = [f"{tag}-lat-{i:03d}" for i in range(users)]
    ctx = types_pb2.UserContext(display_name="Sam", current_streak=STREAK, local_hour=HOUR)
    # Past onboarding (the first 3 messages of a user go to the stateful tier).
    onboarding = ("hi, new here", "i want to get fit this year", "mornings work best for me")

    async def onboard(uid: str) -> None:
        for i, text in enumerate(onboarding):
            await router.Chat(router_service_pb2.ChatRequest(
                user_id=uid, message=text, request_id=f"{uid}-on-{i}", context=ctx), timeout=30)

    await asyncio.gather(*(onboard(u) for u in ids))
    cheap = cheap_texts()
    counter = iter(range(10**9))

    async def health_call() -> str:
        await health.Check(check, timeout=5)
        return ""

    def chat_call(texts: tuple[str, ...]) -> Call:
        async def call() -> str:
            n = next(counter)
            reply = await router.Chat(router_service_pb2.ChatRequest(
                user_id=ids[n % len(ids)], message=texts[n % len(texts)],
                request_id=uuid.uuid4().hex, context=ctx), timeout=5)
            return types_pb2.Route.Name(reply.route).removeprefix("ROUTE_")
        return call

    calls = {"health": health_call, "canned": chat_call(CANNED_TEXTS), "cheap": chat_call(cheap)}
    channels = [health_ch, router_ch]
    if floor_addr:
        floor_ch = grpc.aio.insecure_channel(floor_addr)
        floor = health_pb2_grpc.HealthStub(floor_ch)
        channels.append(floor_ch)

        def floor_call(via: str) -> Call:
            request = health_pb2.HealthCheckRequest(service=via)

            async def call() -> str:
                await floor.Check(request, timeout=5)
                return ""
            return call

        calls |= {"floor_sdk": floor_call(FLOOR_SDK), "floor_http": floor_call(FLOOR_HTTP)}
    return Targets(calls, channels)


async def single_call_latency(targets: Targets, rounds: int, per_round: int,
                              seed: int) -> dict[str, dict[str, object]]:
    rng = random.Random(seed)
    names = list(targets.calls)
    lat: dict[str, list[float]] = {n: [] for n in names}
    routes: dict[str, dict[str, int]] = {n: {} for n in names}
    errors = {n: 0 for n in names}
    for name in names:  # warm-up, not measured
        for _ in range(5):
            await targets.calls[name]()
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            for _ in range(per_round):
                t0 = time.perf_counter()
                try:
                    route = await targets.calls[name]()
                except grpc.aio.AioRpcError:
                    errors[name] += 1
                    continue
                routes[name][route] = routes[name].get(route, 0) + 1
                if route == EXPECTED_ROUTE[name]:  # a call that went elsewhere is not this target
                    lat[name].append((time.perf_counter() - t0) * 1000)
    return {n: {"p50_ms": statistics.median(v) if v else 0.0, "p99_ms": percentile(v, 0.99),
                "calls": len(v), "errors": errors[n], "routes": routes[n]}
            for n, v in lat.items()}


async def throughput(targets: Targets, names: list[str], workers: int, slice_s: float,
                     rounds: int) -> dict[str, dict[str, float]]:
    done = {n: 0 for n in names}
    spent = {n: 0.0 for n in names}
    errors = {n: 0 for n in names}
    for _ in range(rounds):
        for name in names:
            call = targets.calls[name]
            stop_at = time.perf_counter() + slice_s

            async def worker(call: Call = call, name: str = name, stop_at: float = stop_at) -> None:
                while time.perf_counter() < stop_at:
                    try:
                        await call()
                        done[name] += 1
                    except grpc.aio.AioRpcError:
                        errors[name] += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(workers)))
            spent[name] += time.perf_counter() - t0
    return {n: {"per_s": done[n] / spent[n] if spent[n] else 0.0, "calls": done[n],
                "errors": errors[n]} for n in names}
