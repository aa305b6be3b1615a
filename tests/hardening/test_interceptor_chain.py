"""The server interceptor chain on a fake service: request ids, deadlines, error mapping and
metrics, on the first call of a method and on every later one (its wrapper is built once)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from coach.llm.v1 import llm_service_pb2 as pb
from prometheus_client import REGISTRY

from services.common.deadlines import deadline_var
from services.common.errors import NotFound
from services.common.logs import request_id_var
from services.common.peer_channel import PeerChannel
from services.common.rich_status import error_from_rpc
from services.common.server import CoachServer, Registration
from services.common.settings import Env, server_settings

TOKEN = "chain-token"


METHOD = "/coach.test.v1.Chain/ChainEcho"  # a name of its own: its metrics are only ours


class Fake:
    """Answers with the request id and deadline it saw; the message picks a failure."""

    async def echo(self, request: pb.CompleteRequest, context: Any) -> pb.CompleteResponse:
        if request.message == "missing":
            raise NotFound("no such thing", reason="THING_NOT_FOUND")
        if request.message == "crash":
            raise RuntimeError("boom")
        deadline = deadline_var.get()
        return pb.CompleteResponse(text=request_id_var.get(),
                                   model="deadline" if deadline is not None else "none")


def add_fake(servicer: Fake, server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.echo, request_deserializer=pb.CompleteRequest.FromString,
        response_serializer=pb.CompleteResponse.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("coach.test.v1.Chain", {"ChainEcho": handler}),))


class Stub:
    def __init__(self, channel: grpc.aio.Channel, address: str = "") -> None:
        self.address = address
        self.Complete = channel.unary_unary(METHOD, pb.CompleteRequest.SerializeToString,
                                            pb.CompleteResponse.FromString)


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[Stub]:
    env = Env({"COACH_LLM_LISTEN": "127.0.0.1:0", "COACH_AUTH_TOKEN": TOKEN})
    server = CoachServer(server_settings(env, "llm"),
                         [Registration(add_fake, Fake(), "coach.test.v1.Chain")])
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Stub(channel, f"127.0.0.1:{port}")
    await channel.close()
    await server.stop(0.1)


def auth(*extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKEN}"), *extra)


def count(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value("coach_rpc_requests_total", {"method": method, "code": code})
    return value or 0.0


async def test_request_id_comes_from_metadata_then_request_then_a_fresh_one(
    stub: Stub,
) -> None:
    for _ in range(3):  # the first call builds the method's wrapper; later calls reuse it
        reply = await stub.Complete(pb.CompleteRequest(message="hi", request_id="from-request"),
                                    metadata=auth(("x-request-id", "from-metadata")), timeout=5)
        assert (reply.text, reply.model) == ("from-metadata", "deadline")
        reply = await stub.Complete(pb.CompleteRequest(message="hi", request_id="from-request"),
                                    metadata=auth(), timeout=5)
        assert reply.text == "from-request"
        reply = await stub.Complete(pb.CompleteRequest(message="hi"), metadata=auth())
        assert len(reply.text) == 32 and reply.model == "none"
        reply = await stub.Complete(pb.CompleteRequest(message="hi", request_id="é\n"),
                                    metadata=auth(), timeout=5)
        assert reply.text == "%C3%A9%0A"  # safe to forward as metadata


async def test_errors_map_to_status_with_details_and_are_counted(
    stub: Stub,
) -> None:
    before = {code: count("ChainEcho", code) for code in ("OK", "NOT_FOUND", "INTERNAL")}
    for _ in range(2):
        await stub.Complete(pb.CompleteRequest(message="hi"), metadata=auth(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Complete(pb.CompleteRequest(message="missing"), metadata=auth(), timeout=5)
        assert error_from_rpc(missing.value)[:2] == ("NOT_FOUND", "THING_NOT_FOUND")
        with pytest.raises(grpc.aio.AioRpcError) as crashed:
            await stub.Complete(pb.CompleteRequest(message="crash"),
                                metadata=auth(("x-request-id", "rid-crash")), timeout=5)
        assert error_from_rpc(crashed.value)[:2] == ("INTERNAL", "INTERNAL")
        assert "boom" not in (crashed.value.details() or "")
    after = {code: count("ChainEcho", code) for code in before}
    assert {code: after[code] - before[code] for code in before} == {
        "OK": 2, "NOT_FOUND": 2, "INTERNAL": 2}


async def test_a_wrong_token_is_refused_before_and_after_the_wrapper_exists(
    stub: Stub,
) -> None:
    await stub.Complete(pb.CompleteRequest(message="hi"), metadata=auth(), timeout=5)
    for metadata in ((("authorization", "Bearer nope"),), (),
                     (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer nope"))):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Complete(pb.CompleteRequest(message="hi"), metadata=metadata, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def histogram(name: str, method: str) -> tuple[float, float]:
    """(count, sum) of a latency histogram's series for ``method``."""
    labels = {"method": method}
    return (REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0,
            REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0)


async def test_a_peer_channel_times_every_call_as_the_caller_saw_it(stub: Stub) -> None:
    """coach_peer_call_seconds: one observation per unary call through a PeerChannel, failed
    calls too; for the same calls it is never less than what the server saw (the difference
    is the hop)."""
    channel = PeerChannel(grpc.aio.insecure_channel(stub.address), TOKEN)
    peer = Stub(channel)
    client_before = histogram("coach_peer_call_seconds", "ChainEcho")
    server_before = histogram("coach_rpc_latency_seconds", "ChainEcho")
    try:
        for _ in range(3):
            await peer.Complete(pb.CompleteRequest(message="hi"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await peer.Complete(pb.CompleteRequest(message="missing"), timeout=5)
    finally:
        await channel.close()
    client = [a - b for a, b in zip(histogram("coach_peer_call_seconds", "ChainEcho"), client_before)]
    server = [a - b for a, b in zip(histogram("coach_rpc_latency_seconds", "ChainEcho"),
                                    server_before)]
    assert client[0] == server[0] == 4
    assert client[1] >= server[1] > 0
