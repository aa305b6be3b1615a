"""Several replicas of every service, as real processes on one PostgreSQL (issue 19, point 4).

``services.suite`` (what `make up` runs) with COACH_REPLICAS="router=2,threads=2,llm=2":
two routers, two threads and two llm processes and a ledger, each router reaching the
threads and llm replicas round_robin over their address list, as a production client
would. Users' messages alternate between the routers; every message is retried on the
other router (answered from the store, no upstream call, charged once); copies of one
request go to both routers at once; one router is SIGKILLed under load and comes back.
Every answer a caller got is stored once, in the order the user sent it, and the ledger
holds each answer's cost once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from coach.router.v1 import router_service_pb2 as pb
from coach.router.v1 import router_service_pb2_grpc
from coach.type.v1 import types_pb2

from services.suite.suite import Suite
from tests.helpers.polling import eventually
from tests.helpers.processes import MESSAGES, process_suite

REPLICAS = "router=2,threads=2,llm=2"
DAILY_MESSAGES = 40
PER_USER = 30  # messages per user in the kill test, within DAILY_MESSAGES
CONTEXT = types_pb2.UserContext(local_hour=10, display_name="Ana")
ROUND_ROBIN = [("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))]


@dataclass
class Replicas:
    suite: Suite
    pg_url: str
    routers: list[router_service_pb2_grpc.RouterServiceStub]
    # Both routers through one round_robin channel, as a backend reaches them.
    spread: router_service_pb2_grpc.RouterServiceStub
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def upstream_calls(self) -> int:
        url = f"{self.suite.offline_base_url.removesuffix('/v1')}/_control/stats"  # type: ignore[union-attr]
        with urllib.request.urlopen(url, timeout=5) as reply:
            return int(json.loads(reply.read())["model_calls"])


@pytest.fixture(scope="module")
async def replicas(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Replicas]:
    tmp = tmp_path_factory.mktemp("replicas")
    extra = {"COACH_REPLICAS": REPLICAS,
             # A dead router's claims expire this long after their caller's deadline: longer
             # than the router takes to restart and drain its journal (on a loaded machine),
             # as the default (30 s) is.
             "COACH_ROUTER_CLAIM_MARGIN_SECONDS": "15",
             "COACH_LEDGER_FLUSH_INTERVAL_SECONDS": "0.05",
             "COACH_USER_DAILY_MESSAGES": str(DAILY_MESSAGES)}
    async with process_suite(pg_url, tmp / "data", tmp / "logs", extra) as suite:
        assert len(suite.replicas["router"]) == 2 and len(suite.replicas["threads"]) == 2
        channels = [grpc.aio.insecure_channel(a) for a in suite.replicas["router"]]
        spread = grpc.aio.insecure_channel(suite.targets["router"], options=ROUND_ROBIN)
        yield Replicas(suite, pg_url,
                       [router_service_pb2_grpc.RouterServiceStub(c) for c in channels],
                       router_service_pb2_grpc.RouterServiceStub(spread), [*channels, spread])
        for channel in channels + [spread]:
            await channel.close()


def ask(user: str, message: str, request_id: str) -> pb.ChatRequest:
    return pb.ChatRequest(user_id=user, message=message, request_id=request_id, context=CONTEXT)


def answer_of(reply: pb.ChatResponse) -> tuple[Any, ...]:
    return (tuple(reply.messages), reply.route, reply.model, reply.cost_usd_nanos)


async def fetch(pg_url: str, sql: str, prefix: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url)
    try:
        return list(await conn.fetch(sql, prefix.replace("_", r"\_") + "%"))
    finally:
        await conn.close()


async def ledger_costs(pg_url: str, prefix: str, expected: int) -> dict[str, int]:
    async def rows() -> dict[str, int] | None:
        found = {r["request_id"]: r["cost_usd_nanos"] for r in await fetch(
            pg_url, "SELECT request_id, cost_usd_nanos FROM answers WHERE user_id LIKE $1",
            prefix)}
        return found if len(found) >= expected else None
    return await eventually(rows, timeout=30, interval=0.1,
                            what=f"{expected} answers in the ledger")


async def stored_in_order(pg_url: str, prefix: str) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """Per user, (request id, coach texts) of the stored exchanges in the order stored."""
    rows = await fetch(pg_url, """
        SELECT m.user_id, m.request_id, e.coach_texts FROM threads.messages m
          JOIN threads.exchanges e USING (request_id)
         WHERE m.direction = 'in' AND m.user_id LIKE $1 ORDER BY m.id""", prefix)
    stored: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for r in rows:
        stored.setdefault(r["user_id"], []).append((r["request_id"], tuple(r["coach_texts"])))
    return stored


async def assert_stored_once_in_order(
        replicas: Replicas, prefix: str, sent: dict[str, list[tuple[str, pb.ChatResponse]]]) -> None:
    """Every answer a caller got is stored once, in the user's order, and charged once."""
    total = sum(len(v) for v in sent.values())
    ledger = await ledger_costs(replicas.pg_url, prefix, total)
    stored = await eventually(
        lambda: _all_stored(replicas.pg_url, prefix, total), timeout=30, interval=0.1,
        what="every answer stored")
    assert stored == {user: [(rid, tuple(a.messages)) for rid, a in answers]
                      for user, answers in sent.items()}
    answers = {rid: a for v in sent.values() for rid, a in v}
    assert set(ledger) == set(answers)
    assert sum(ledger.values()) == sum(a.cost_usd_nanos for a in answers.values())


async def _all_stored(pg_url: str, prefix: str, total: int) -> Any:
    stored = await stored_in_order(pg_url, prefix)
    return stored if sum(len(v) for v in stored.values()) >= total else None


async def test_retries_on_the_other_router_are_answered_from_the_store(replicas: Replicas) -> None:
    """10 users, 3 messages each, alternating routers; each retried at once on the other
    router: the 30 retries get the first answer, with no upstream call of their own."""
    prefix = f"alt-{uuid.uuid4().hex[:6]}-"
    sent: dict[str, list[tuple[str, pb.ChatResponse]]] = {}

    async def user(i: int) -> int:
        name, calls = f"{prefix}{i}", 0
        for n in range(3):
            first, other = replicas.routers[(i + n) % 2], replicas.routers[(i + n + 1) % 2]
            rid, message = uuid.uuid4().hex, MESSAGES[(i + n) % 3]
            reply = await first.Chat(ask(name, message, rid), timeout=20)
            retry = await other.Chat(ask(name, message, rid), timeout=20)
            assert answer_of(retry) == answer_of(reply), (name, n, message)
            sent.setdefault(name, []).append((rid, reply))
            calls += reply.route in (types_pb2.ROUTE_COMPLETIONS, types_pb2.ROUTE_ASSISTANT)
        return calls

    before = replicas.upstream_calls()
    answered_upstream = sum(await asyncio.gather(*(user(i) for i in range(10))))
    # Each answer from upstream is one model call (no pruning or summary this early);
    # the retries made none.
    assert replicas.upstream_calls() - before == answered_upstream
    await assert_stored_once_in_order(replicas, prefix, sent)


async def test_copies_at_once_on_both_routers_get_one_answer_and_one_charge(
        replicas: Replicas) -> None:
    prefix = f"dup-{uuid.uuid4().hex[:6]}-"
    sent: dict[str, list[tuple[str, pb.ChatResponse]]] = {}

    async def user(i: int) -> int:
        name, calls = f"{prefix}{i}", 0
        for n in range(3):
            rid, message = uuid.uuid4().hex, MESSAGES[(i + n) % 3]
            a, b = await asyncio.gather(*(r.Chat(ask(name, message, rid), timeout=20)
                                          for r in replicas.routers))
            assert answer_of(a) == answer_of(b), (name, n, message)
            sent.setdefault(name, []).append((rid, a))
            calls += a.route in (types_pb2.ROUTE_COMPLETIONS, types_pb2.ROUTE_ASSISTANT)
        return calls

    before = replicas.upstream_calls()
    answered_upstream = sum(await asyncio.gather(*(user(i) for i in range(8))))
    assert replicas.upstream_calls() - before == answered_upstream
    await assert_stored_once_in_order(replicas, prefix, sent)


async def test_the_user_cache_follows_answers_given_on_the_other_router(
        replicas: Replicas) -> None:
    """Both routers cache the user; each answer the other one gives counts at once: the
    first 3 messages are onboarding (stateful tier), the 4th on is a canned reply, and a
    canned reply is never the one given just before, whichever router gave that."""
    for i in range(4):
        user = f"cache-{uuid.uuid4().hex[:6]}-{i}"
        replies = [await replicas.routers[(n + i) % 2].Chat(ask(user, "hey", uuid.uuid4().hex),
                                                            timeout=20)
                   for n in range(7)]
        assert [r.route for r in replies] == [types_pb2.ROUTE_ASSISTANT] * 3 + [
            types_pb2.ROUTE_PATTERN] * 4, user
        canned = [tuple(r.messages) for r in replies[3:]]
        assert all(a != b for a, b in itertools.pairwise(canned)), canned


async def test_one_provider_conversation_per_user_across_replicas(replicas: Replicas) -> None:
    """Stateful messages alternating routers, then two at once (one per router): every
    answer is in the user's one conversation, and the store maps one."""
    prefix = f"conv-{uuid.uuid4().hex[:6]}-"

    async def user(i: int) -> set[str]:
        name = f"{prefix}{i}"
        conversations = set()
        for n in range(3):
            reply = await replicas.routers[(n + i) % 2].Chat(
                ask(name, MESSAGES[2], uuid.uuid4().hex), timeout=20)
            conversations.add(reply.conversation_id)
        both = await asyncio.gather(*(r.Chat(ask(name, MESSAGES[2], uuid.uuid4().hex),
                                             timeout=20) for r in replicas.routers))
        assert all(r.route == types_pb2.ROUTE_ASSISTANT for r in both)
        return conversations | {r.conversation_id for r in both}

    for conversations in await asyncio.gather(*(user(i) for i in range(4))):
        assert len(conversations) == 1 and "" not in conversations, conversations
    rows = await fetch(replicas.pg_url, """SELECT user_id, count(*) AS n
        FROM threads.conversations WHERE user_id LIKE $1 GROUP BY user_id""", prefix)
    assert sorted(r["n"] for r in rows) == [1, 1, 1, 1]


async def test_the_daily_message_limit_holds_across_routers(replicas: Replicas) -> None:
    """COACH_USER_DAILY_MESSAGES over both routers together: the user's messages alternate
    between them, and the one past the limit is refused, whichever router gets it."""
    user = f"limit-{uuid.uuid4().hex[:6]}"
    codes = []
    for n in range(DAILY_MESSAGES + 3):
        try:
            await replicas.routers[n % 2].Chat(ask(user, "hey", uuid.uuid4().hex), timeout=20)
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as exc:
            codes.append(exc.code())
    assert codes == [grpc.StatusCode.OK] * DAILY_MESSAGES + [
        grpc.StatusCode.RESOURCE_EXHAUSTED] * 3


async def test_a_router_killed_under_load_loses_nothing(replicas: Replicas) -> None:
    """20 users send messages through the round_robin channel, retrying UNAVAILABLE with the
    same request id; router-2 is SIGKILLed meanwhile and restarted by the supervisor (its
    journal drained at start). Every answer is stored once, in order, and charged once."""
    prefix = f"kill-{uuid.uuid4().hex[:6]}-"
    sent: dict[str, list[tuple[str, pb.ChatResponse]]] = {}
    stop = asyncio.Event()
    retried: list[str] = []

    names = [f"{prefix}{i}" for i in range(20)]
    spread = replicas.channels[-1]

    async def user(i: int) -> None:
        name, n = names[i], 0
        while not stop.is_set() and n < PER_USER:  # within the daily limit
            rid, message = uuid.uuid4().hex, MESSAGES[(i + n) % 3]
            give_up = time.monotonic() + 90
            while True:
                try:
                    reply = await replicas.spread.Chat(ask(name, message, rid), timeout=8)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED), exc
                    assert time.monotonic() < give_up, f"{name} never answered: {exc}"
                    retried.append(rid)
                    # again once the channel has a router to send it to
                    await asyncio.wait_for(spread.channel_ready(), 30)
            sent.setdefault(name, []).append((rid, reply))
            n += 1
            # Rounds: a user's next message waits for every user's previous one, so the load
            # lasts through the kill and the restart whatever the machine's speed.
            await eventually(lambda n=n: stop.is_set()
                             or min(len(sent.get(u, ())) for u in names) >= n,
                             timeout=90, what=f"round {n} of the load")

    users = [asyncio.create_task(user(i)) for i in range(len(names))]
    await eventually(lambda: sum(len(v) for v in sent.values()) >= 40, timeout=60,
                     what="load under way")
    victim = replicas.suite.services["router-2"]
    old_pid = victim.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    await eventually(lambda: replicas.suite.services["router-2"].running
                     and replicas.suite.services["router-2"].pid != old_pid,
                     timeout=60, what="router-2 restarted")
    answered = sum(len(v) for v in sent.values())
    await eventually(lambda: sum(len(v) for v in sent.values()) >= answered + 40, timeout=60,
                     what="load on both routers again")
    stop.set()
    await asyncio.gather(*users)
    assert replicas.suite.restarts["router-2"] >= 1
    await assert_stored_once_in_order(replicas, prefix, sent)
    print(f"killed router-2 under load: {sum(len(v) for v in sent.values())} answers, "
          f"{len(retried)} retries ({len(set(retried))} request ids)")
