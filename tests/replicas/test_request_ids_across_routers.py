"""A request id is answered once across router replicas (issue 19, point 1).

Two routers, each with its own threads and llm replica, beside one ledger on one
PostgreSQL (in-process servers, real gRPC, the offline upstream over HTTP). Retries with
the same request id on the other router are answered from the store, whether that router
has the user cached or not; two copies of one request sent to both routers at once get one
answer, one upstream call and one charge.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from coach.router.v1 import router_service_pb2 as pb
from coach.router.v1 import router_service_pb2_grpc
from coach.type.v1 import types_pb2

from services.offline_openai import start_offline_openai
from tests.helpers.polling import eventually
from tests.helpers.services import RunningService, start_service, stop_service

CANNED = "hey"
CHEAP = "quick q: is it ok to train two days in a row?"
STATEFUL = "I keep failing at my morning runs and I feel like giving up, what should I change?"
CONTEXT = types_pb2.UserContext(local_hour=10, display_name="Ana")


@dataclass
class TwoRouters:
    routers: list[router_service_pb2_grpc.RouterServiceStub]
    upstream: Any
    pg_url: str


@pytest.fixture(scope="module")
async def two(pg_url: str) -> AsyncIterator[TwoRouters]:
    upstream = await start_offline_openai(host="127.0.0.1", port=0)
    env = {"DATABASE_URL": pg_url, "OPENAI_BASE_URL": upstream.base_url,
           "OPENAI_API_KEY": "offline", "COACH_SHUTDOWN_GRACE_SECONDS": "1",
           "COACH_LEDGER_FLUSH_INTERVAL_SECONDS": "0.05"}
    ledger = await start_service("ledger", env)
    started: list[RunningService] = [ledger]
    env["COACH_LEDGER_ADDR"] = ledger.address
    channels = []
    routers = []
    for _ in range(2):  # an llm, a threads and a router replica per side, on one database
        side = dict(env)
        for name in ("llm", "threads", "router"):
            service = await start_service(name, side)
            started.append(service)
            side[f"COACH_{name.upper()}_ADDR"] = service.address
        router = started[-1]
        channel = grpc.aio.insecure_channel(router.address)
        channels.append(channel)
        routers.append(router_service_pb2_grpc.RouterServiceStub(channel))
    yield TwoRouters(routers, upstream, pg_url)
    for channel in channels:
        await channel.close()
    for service in reversed(started):
        await stop_service(service)
    await upstream.close()


def ask(user: str, message: str, request_id: str) -> pb.ChatRequest:
    return pb.ChatRequest(user_id=user, message=message, request_id=request_id, context=CONTEXT)


def answer_of(reply: pb.ChatResponse) -> tuple[Any, ...]:
    return (tuple(reply.messages), reply.route, reply.model, reply.cost_usd_nanos,
            reply.usage.input_tokens, reply.usage.output_tokens)


async def ledger_rows(pg_url: str, prefix: str) -> dict[str, int]:
    like = prefix.replace("_", r"\_") + "%"
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT request_id, cost_usd_nanos FROM answers WHERE user_id LIKE $1", like)
    finally:
        await conn.close()
    return {r["request_id"]: r["cost_usd_nanos"] for r in rows}


async def stored_exchanges(pg_url: str, prefix: str) -> list[tuple[str, str, tuple[str, ...]]]:
    like = prefix.replace("_", r"\_") + "%"
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            """SELECT user_id, request_id, coach_texts FROM threads.exchanges
                WHERE user_id LIKE $1 ORDER BY created_at, request_id""", like)
    finally:
        await conn.close()
    return [(r["user_id"], r["request_id"], tuple(r["coach_texts"])) for r in rows]


async def test_retries_on_the_other_router_are_answered_from_the_store(two: TwoRouters) -> None:
    """Each user's messages alternate between the routers (so both cache every user), and
    every message is retried at once on the other router: 30 retries, every one the first
    answer, with no upstream call and no second charge."""
    prefix = f"alt-{uuid.uuid4().hex[:6]}-"
    users = [f"{prefix}{i}" for i in range(3)]
    answers: dict[str, pb.ChatResponse] = {}
    upstream_before = two.upstream.stats.model_calls
    calls_for_firsts = 0
    for n in range(10):
        for u, user in enumerate(users):
            first, other = two.routers[(n + u) % 2], two.routers[(n + u + 1) % 2]
            rid = uuid.uuid4().hex
            message = (CANNED, CHEAP, STATEFUL)[(n + u) % 3]
            before = two.upstream.stats.model_calls
            answers[rid] = await first.Chat(ask(user, message, rid), timeout=20)
            calls_for_firsts += two.upstream.stats.model_calls - before
            retry = await other.Chat(ask(user, message, rid), timeout=20)
            assert answer_of(retry) == answer_of(answers[rid]), (n, user, message)
    assert len(answers) == 30
    # the retries made no upstream call of their own
    assert two.upstream.stats.model_calls - upstream_before == calls_for_firsts
    ledger = await eventually(
        lambda: _complete(ledger_rows(two.pg_url, prefix), 30), timeout=20,
        what="every answer in the ledger")
    assert set(ledger) == set(answers)
    assert sum(ledger.values()) == sum(a.cost_usd_nanos for a in answers.values())
    stored = await stored_exchanges(two.pg_url, prefix)
    assert {rid: texts for _, rid, texts in stored} == {
        rid: tuple(a.messages) for rid, a in answers.items()}


async def _complete(rows: Any, expected: int) -> dict[str, int] | None:
    found: dict[str, int] = await rows
    return found if len(found) >= expected else None


@pytest.mark.parametrize("message", [CANNED, CHEAP, STATEFUL], ids=["canned", "cheap", "stateful"])
async def test_two_copies_at_once_on_two_routers_get_one_answer(
        two: TwoRouters, message: str) -> None:
    prefix = f"dup-{uuid.uuid4().hex[:6]}-"
    user = f"{prefix}u"
    # a few messages first, so the message is routed by its text, not onboarding
    for i in range(4):
        await two.routers[i % 2].Chat(ask(user, CANNED, uuid.uuid4().hex), timeout=20)
    rid = uuid.uuid4().hex
    before = two.upstream.stats.model_calls
    a, b = await asyncio.gather(*(r.Chat(ask(user, message, rid), timeout=20)
                                  for r in two.routers))
    assert answer_of(a) == answer_of(b)
    upstream_calls = two.upstream.stats.model_calls - before
    assert upstream_calls == (0 if a.route == types_pb2.ROUTE_PATTERN else 1), upstream_calls
    ledger = await eventually(lambda: _complete(ledger_rows(two.pg_url, prefix), 5),
                              timeout=20, what="five answers in the ledger")
    assert ledger[rid] == a.cost_usd_nanos
    stored = [s for s in await stored_exchanges(two.pg_url, prefix) if s[1] == rid]
    assert stored == [(user, rid, tuple(a.messages))]
