"""Replaying users through Router.Chat: sequential per user, concurrent across users."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from coach.router.v1 import types_pb2

from bench.harness import RouterClient
from bench.workload import User
from services.ledger.pricing import PriceBook


@dataclass(frozen=True)
class Sample:
    user_id: str
    turn: int
    kind: str
    route: str
    latency_s: float
    cost_nanos: int
    input_tokens: int
    cached_input_tokens: int
    error: str = ""
    model: str = ""
    message_type: str = ""
    # Simulated time of the message (day, local hour): for the cache-expiry estimate.
    slot: tuple[int, int] = (0, 0)


async def replay(client: RouterClient, users: Sequence[User], *, concurrency: int,
                 timeout: float, tag: str) -> tuple[list[Sample], float]:
    """Every user's messages in order; at most ``concurrency`` users in flight at once."""
    gate = asyncio.Semaphore(concurrency)
    samples: list[Sample] = []

    async def one_user(user: User) -> None:
        async with gate:
            for i, m in enumerate(user.messages):
                t0 = time.perf_counter()
                try:
                    reply = await client.chat(
                        user.user_id, m.text, request_id=f"{tag}-{user.user_id}-{i}",
                        local_hour=m.local_hour, streak=m.streak, display_name=m.display_name,
                        timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    samples.append(Sample(user.user_id, i, m.kind, "ERROR",
                                          time.perf_counter() - t0, 0, 0, 0, exc.code().name,
                                          slot=(m.day, m.local_hour)))
                    continue
                samples.append(Sample(
                    user.user_id, i, m.kind,
                    types_pb2.Route.Name(reply.route).removeprefix("ROUTE_"),
                    time.perf_counter() - t0, reply.cost_usd_nanos,
                    reply.usage.input_tokens, reply.usage.cached_input_tokens,
                    model=reply.model,
                    message_type=types_pb2.MessageType.Name(reply.message_type).removeprefix(
                        "MESSAGE_TYPE_"),
                    slot=(m.day, m.local_hour)))

    started = time.perf_counter()
    await asyncio.gather(*(one_user(u) for u in users))
    return samples, time.perf_counter() - started


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarize(samples: Sequence[Sample], wall_s: float) -> dict[str, object]:
    ok = [s for s in samples if not s.error]
    lat = [s.latency_s * 1000 for s in ok]
    routes = Counter(s.route for s in ok)
    return {
        "messages": len(samples),
        "answered": len(ok),
        "errors": len(samples) - len(ok),
        "error_codes": dict(Counter(s.error for s in samples if s.error)),
        "timeouts": sum(s.error == "DEADLINE_EXCEEDED" for s in samples),
        "fallbacks": routes.get("FALLBACK", 0),
        "routes": dict(routes),
        "cost_nanos": sum(s.cost_nanos for s in ok),
        "p50_ms": statistics.median(lat) if lat else 0.0,
        "p99_ms": percentile(lat, 0.99),
        "wall_s": wall_s,
        "msgs_per_s": len(ok) / wall_s if wall_s else 0.0,
    }


def tokens_at_turns(samples: Sequence[Sample], user_id: str, turns: Sequence[int],
                    window: int = 2) -> dict[int, float]:
    """Stateful input tokens of the long conversation at each turn (1-based): the median of
    turns t-window..t+window, so one message's length does not swing the figure."""
    by_turn = {s.turn + 1: s.input_tokens for s in samples
               if s.user_id == user_id and s.route == "ASSISTANT" and not s.error}
    out: dict[int, float] = {}
    for t in turns:
        near = [by_turn[k] for k in range(t - window, t + window + 1) if k in by_turn]
        if near:
            out[t] = float(statistics.median(near))
    return out


def routes_by_kind(samples: Sequence[Sample]) -> dict[str, dict[str, int]]:
    """For each kind of message in the workload, how many went by which route."""
    out: dict[str, Counter[str]] = {}
    for s in samples:
        out.setdefault(s.kind, Counter())[s.route] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


def cold_cache_cost(samples: Sequence[Sample], prices: PriceBook) -> int:
    """Cost (nano-USD) had the provider's prompt cache expired between a user's sessions.

    The replay compresses weeks into minutes, so a user's conversation prefix is
    always still cached at the next message; a real provider keeps a cached prefix
    for minutes, not hours. Here an answer keeps its cached tokens only when the
    user's previous message was in the same simulated hour; otherwise they are
    priced as ordinary input. Upkeep charges are left as they were.
    """
    last_slot: dict[str, tuple[int, int]] = {}
    total = 0
    for s in sorted(samples, key=lambda s: (s.user_id, s.turn)):
        if s.error:
            continue
        total += s.cost_nanos
        warm = last_slot.get(s.user_id) == s.slot
        last_slot[s.user_id] = s.slot
        if s.cached_input_tokens and s.model and not warm:
            cached = prices.cost_usd_nanos(s.model, s.input_tokens, s.cached_input_tokens, 0).nanos
            cold = prices.cost_usd_nanos(s.model, s.input_tokens, 0, 0).nanos
            total += cold - cached
    return total
