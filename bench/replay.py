"""Replaying users through Router.Chat: sequential per user, concurrent across users.

`replay` sends every user's messages as fast as it can (the scale phase). `replay_in_windows`
replays in simulated time: the messages of every user (and of several suites at once) are
cut into lockstep windows of simulated time, ordered globally; before each window every
suite's offline server clock is set to the window's start, then the window's messages go
(sequential per user, concurrent across users and suites). So the offline server's prompt
cache expires between a user's sessions as a real provider's would.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from coach.type.v1 import types_pb2

from bench.harness import RouterClient
from bench.workload import Message, User


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
    truncated: bool = False  # the reply was cut off by its max_output_tokens


async def send(client: RouterClient, user: User, i: int, m: Message, *, timeout: float,
               tag: str) -> Sample:
    """One message through Router.Chat, as a Sample (an error is a Sample too)."""
    t0 = time.perf_counter()
    try:
        reply = await client.chat(
            user.user_id, m.text, request_id=f"{tag}-{user.user_id}-{i}",
            local_hour=m.local_hour, streak=m.streak, display_name=m.display_name,
            timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return Sample(user.user_id, i, m.kind, "ERROR", time.perf_counter() - t0, 0, 0, 0,
                      exc.code().name)
    return Sample(
        user.user_id, i, m.kind,
        types_pb2.Route.Name(reply.route).removeprefix("ROUTE_"),
        time.perf_counter() - t0, reply.cost_usd_nanos,
        reply.usage.input_tokens, reply.usage.cached_input_tokens,
        model=reply.model,
        message_type=types_pb2.MessageType.Name(reply.message_type).removeprefix("MESSAGE_TYPE_"),
        truncated=reply.usage.truncated)


async def replay(client: RouterClient, users: Sequence[User], *, concurrency: int,
                 timeout: float, tag: str) -> tuple[list[Sample], float]:
    """Every user's messages in order; at most ``concurrency`` users in flight at once."""
    gate = asyncio.Semaphore(concurrency)
    samples: list[Sample] = []

    async def one_user(user: User) -> None:
        async with gate:
            for i, m in enumerate(user.messages):
                samples.append(await send(client, user, i, m, timeout=timeout, tag=tag))

    started = time.perf_counter()
    await asyncio.gather(*(one_user(u) for u in users))
    return samples, time.perf_counter() - started


@dataclass(frozen=True)
class WindowedRun:
    """One suite's part of a lockstep replay: its router client, tag and clock setter."""

    client: RouterClient
    tag: str
    set_clock: Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class WindowStats:
    windows: int
    window_s: int
    deepest: int  # most messages one user sent in one window
    wall_s: float


async def replay_in_windows(runs: Sequence[WindowedRun], users: Sequence[User], *,
                            window_s: int, origin: float, concurrency: int, timeout: float,
                            ) -> tuple[list[list[Sample]], WindowStats]:
    """Every run replays the same users in lockstep windows of ``window_s`` simulated seconds.

    Windows are ordered globally (all users, all runs); empty ones are skipped. Before a
    window, every run's clock is set to ``origin`` + the window's start; inside it, each
    user's messages go in order and users (and runs) go concurrently, at most
    ``concurrency`` users per run in flight. Returns each run's samples.
    """
    windows: dict[int, list[tuple[User, list[tuple[int, Message]]]]] = {}
    for user in users:
        per_window: dict[int, list[tuple[int, Message]]] = {}
        for i, m in enumerate(user.messages):
            per_window.setdefault(m.at_s // window_s, []).append((i, m))
        for w, msgs in per_window.items():
            windows.setdefault(w, []).append((user, msgs))
    out: list[list[Sample]] = [[] for _ in runs]
    gates = [asyncio.Semaphore(concurrency) for _ in runs]

    async def chain(k: int, user: User, msgs: list[tuple[int, Message]]) -> None:
        run = runs[k]
        async with gates[k]:
            for i, m in msgs:
                out[k].append(await send(run.client, user, i, m, timeout=timeout, tag=run.tag))

    started = time.perf_counter()
    for w in sorted(windows):
        await asyncio.gather(*(run.set_clock(origin + w * window_s) for run in runs))
        await asyncio.gather(*(chain(k, user, msgs) for k in range(len(runs))
                               for user, msgs in windows[w]))
    deepest = max((len(msgs) for chains in windows.values() for _, msgs in chains), default=0)
    return out, WindowStats(len(windows), window_s, deepest, time.perf_counter() - started)


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
        # replies cut off by max_output_tokens, among those that made an upstream call
        "truncated": sum(s.truncated for s in ok),
        "upstream_answers": sum(s.route in ("COMPLETIONS", "ASSISTANT") for s in ok),
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


def cache_hit_share(samples: Sequence[Sample]) -> float:
    """Cached input tokens / input tokens, as the ChatResponses reported them."""
    ok = [s for s in samples if not s.error]
    total = sum(s.input_tokens for s in ok)
    return sum(s.cached_input_tokens for s in ok) / total if total else 0.0
