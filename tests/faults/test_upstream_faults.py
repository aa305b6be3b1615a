"""Upstream 500 / 429 / hang: the router answers a fallback within the caller's deadline, and
answers normally again once the fault clears and the breaker's cool-down is over."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from coach.router.v1 import router_service_pb2 as pb
from coach.type.v1 import types_pb2

from tests.helpers.polling import eventually
from tests.helpers.status import recorded_in_ledger
from tests.helpers.suite import BREAKER_COOLDOWN_S, Suite

DEADLINE_S = 3.0
STATEFUL = "I keep failing at my morning runs and I feel like giving up, what should I change?"
CHEAP = "quick q: is it ok to train two days in a row?"


async def timed_chat(suite: Suite, prefix: str, text: str) -> tuple[pb.ChatResponse, float]:
    """One message from a new user (so the route depends on the message alone)."""
    user = prefix + uuid.uuid4().hex[:8]
    started = time.monotonic()
    reply = await suite.router.Chat(
        pb.ChatRequest(user_id=user, message=text, request_id=uuid.uuid4().hex,
                       context=types_pb2.UserContext(local_hour=10)),
        timeout=DEADLINE_S,
    )
    return reply, time.monotonic() - started


@pytest.mark.parametrize("mode", ["error_500", "error_429", "hang"])
async def test_fallback_within_the_deadline_then_recovery(faulty: Suite, mode: str) -> None:
    prefix = f"fault-{mode}-{uuid.uuid4().hex[:6]}-"
    # Healthy first: both tiers answer for real.
    for text, route in ((STATEFUL, types_pb2.ROUTE_ASSISTANT), (CHEAP, types_pb2.ROUTE_COMPLETIONS)):
        reply, _ = await timed_chat(faulty, prefix, text)
        assert reply.route == route, reply

    faulty.upstream.faults.set(mode=mode, retry_after_s=1)
    try:
        results = await asyncio.gather(*(
            timed_chat(faulty, prefix, STATEFUL if i % 2 else CHEAP) for i in range(6)
        ))
        # Once the breaker is open, calls fail fast without waiting on the upstream.
        results += [await timed_chat(faulty, prefix, CHEAP) for _ in range(2)]
    finally:
        faulty.upstream.faults.clear()
    # Each came back as a reply, so within the caller's deadline (past it: DEADLINE_EXCEEDED).
    for reply, _ in results:
        assert reply.route == types_pb2.ROUTE_FALLBACK, reply
        assert reply.messages and reply.cost_usd_nanos == 0
    slowest = max(e for _, e in results)

    cleared = time.monotonic()
    recovered: dict[int, float] = {}

    async def both_tiers_back() -> bool:
        for route, text in ((types_pb2.ROUTE_ASSISTANT, STATEFUL),
                            (types_pb2.ROUTE_COMPLETIONS, CHEAP)):
            if route not in recovered:
                reply, _ = await timed_chat(faulty, prefix, text)
                if reply.route == route:
                    recovered[route] = time.monotonic() - cleared
        return len(recovered) == 2

    await eventually(both_tiers_back, interval=0.1,
                     what=f"both tiers answering again (cool-down {BREAKER_COOLDOWN_S}s)")
    print(f"\n{mode}: slowest fallback {slowest:.2f}s of a {DEADLINE_S}s deadline; "
          f"recovered {max(recovered.values()):.2f}s after the fault cleared")

    # Every answer, the fallbacks included, reached the ledger once.
    answered = 2 + len(results) + len(recovered)  # at least: recovery polls answered more
    ids = await recorded_in_ledger(faulty.env["DATABASE_URL"], prefix, answered, timeout=20)
    assert len(ids) >= answered and len(ids) == len(set(ids))
