"""COACH_AUTH_TOKEN: every RPC but health needs `authorization: Bearer <token>`, the services
use it with each other, and reflection is no exception."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from coach.router.v1 import router_service_pb2 as router_pb
from coach.threads.v1 import threads_service_pb2 as threads_pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from tests.helpers.polling import eventually
from tests.helpers.status import call_failure, recorded_in_ledger
from tests.helpers.suite import Stubs, Suite, start_suite, stop_suite, stubs_for

TOKEN = "t0k-" + uuid.uuid4().hex
GOOD = (("authorization", f"Bearer {TOKEN}"),)
WRONG = (("authorization", f"Bearer {TOKEN[:-1]}x"),)
SERVICES = {
    "router": "coach.router.v1.RouterService",
    "threads": "coach.threads.v1.ThreadsService",
    "llm": "coach.llm.v1.LlmService",
    "ledger": "coach.ledger.v1.LedgerService",
}


@pytest.fixture(scope="module")
async def authed(pg_url: str, offline_openai: Any) -> AsyncIterator[tuple[Suite, Stubs]]:
    suite = await start_suite(pg_url, offline_openai, {"COACH_AUTH_TOKEN": TOKEN})
    stubs = stubs_for(suite)
    yield suite, stubs
    await stubs.close()
    await stop_suite(suite)


def chat(user: str) -> router_pb.ChatRequest:
    # A struggling message goes to the stateful tier: router -> threads -> llm -> upstream,
    # and threads -> ledger afterwards; every hop needs the token.
    return router_pb.ChatRequest(user_id=user, message="I keep failing at my morning run and I "
                                 "feel like giving up, what should I change?",
                                 request_id=uuid.uuid4().hex)


async def test_chat_works_with_the_token_end_to_end(authed: Any) -> None:
    suite, stubs = authed
    user = "auth-" + uuid.uuid4().hex[:8]
    for _ in range(2):
        reply = await stubs.router.Chat(chat(user), metadata=GOOD, timeout=20)
        assert reply.messages and reply.route != 4, reply  # not ROUTE_FALLBACK: every hop passed
    count = await stubs.threads.CountMessages(
        threads_pb.CountMessagesRequest(user_id=user), metadata=GOOD, timeout=5)
    assert count.count == 2
    # threads' relay reached the ledger with the token too.
    assert len(await recorded_in_ledger(suite.env["DATABASE_URL"], user, 2)) == 2


async def test_the_routers_change_stream_carries_the_token(authed: Any) -> None:
    """WatchUserChanges is a streaming call (no unary interceptor): with the token the stream
    is live, so the router's user cache is on and a user's later messages hit it."""
    _, stubs = authed
    user = "auth-cache-" + uuid.uuid4().hex[:8]

    def hits() -> float:
        return REGISTRY.get_sample_value("coach_router_user_cache_total", {"outcome": "hit"}) or 0.0

    async def a_later_message_hits() -> bool:
        """The stream goes live a moment after the router starts; from then on the user's
        state is cached and their next message is answered from the cache."""
        before = hits()
        await stubs.router.Chat(router_pb.ChatRequest(user_id=user, message="ok",
                                                      request_id=uuid.uuid4().hex),
                                metadata=GOOD, timeout=20)
        return hits() > before

    await eventually(a_later_message_hits, interval=0.1,
                     what="a later message answered from the router's user cache")


@pytest.mark.parametrize("metadata", [(), WRONG, (("authorization", TOKEN),),
                                      (("authorization", "Basic " + TOKEN),)],
                         ids=["missing", "wrong", "no-scheme", "basic"])
async def test_chat_without_the_right_token_is_unauthenticated(authed: Any, metadata: Any) -> None:
    _, stubs = authed
    failure = await call_failure(stubs.router.Chat, chat("auth-x"), metadata=metadata, timeout=5)
    assert failure is not None and failure.code == grpc.StatusCode.UNAUTHENTICATED, failure
    assert failure.reason == "UNAUTHENTICATED"


async def test_every_rpc_of_every_service_rejects_a_missing_token(authed: Any) -> None:
    suite, _ = authed
    from google.protobuf import symbol_database

    db = symbol_database.Default()
    for name, full in SERVICES.items():
        async with grpc.aio.insecure_channel(suite.services[name].address) as channel:
            service = db.pool.FindServiceByName(full)
            assert service.methods
            for method in service.methods:
                request_cls = db.GetSymbol(method.input_type.full_name)
                call = channel.unary_unary(
                    f"/{full}/{method.name}",
                    request_serializer=request_cls.SerializeToString,
                    response_deserializer=lambda b: b,
                )
                failure = await call_failure(call, request_cls(), timeout=5)
                assert failure is not None, f"{name}.{method.name} answered without a token"
                assert failure.code == grpc.StatusCode.UNAUTHENTICATED, (method.name, failure)
                failure = await call_failure(call, request_cls(), metadata=WRONG, timeout=5)
                assert failure is not None and failure.code == grpc.StatusCode.UNAUTHENTICATED


async def test_health_needs_no_token_and_reflection_does(authed: Any) -> None:
    suite, _ = authed
    for name, full in SERVICES.items():
        async with grpc.aio.insecure_channel(suite.services[name].address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", full):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                async for _ in reflection.ServerReflectionInfo(iter([ask]), timeout=5):
                    pass
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
            listed = [r async for r in reflection.ServerReflectionInfo(iter([ask]), metadata=GOOD,
                                                                      timeout=5)]
            names = {s.name for s in listed[0].list_services_response.service}
            assert full in names and "grpc.health.v1.Health" in names
