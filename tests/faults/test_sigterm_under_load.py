"""SIGTERM to the router process while messages are in flight: health goes NOT_SERVING, the
in-flight calls finish OK (stored and in the ledger), new calls are refused with UNAVAILABLE,
none is dropped. Then the supervisor brings the router back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import grpc
from coach.router.v1 import router_service_pb2 as pb
from coach.router.v1 import router_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.polling import eventually
from tests.helpers.processes import MESSAGES, process_suite, set_upstream_fault, upstream_requests
from tests.helpers.status import ledger_request_ids, recorded_in_ledger

UPSTREAM_LATENCY_MS = 800
GRACE_S = 15  # COACH_SHUTDOWN_GRACE_SECONDS: longer than any in-flight call here


async def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(pg_url: str, tmp_path: Path) -> None:
    prefix = f"term-{uuid.uuid4().hex[:6]}-"
    async with process_suite(pg_url, tmp_path / "data", tmp_path / "logs",
                             {"COACH_SHUTDOWN_GRACE_SECONDS": str(GRACE_S)}) as suite:
        address = suite.addresses["router"]
        set_upstream_fault(suite, {"mode": "latency", "latency_ms": UPSTREAM_LATENCY_MS})
        seen: list[int] = []
        async with grpc.aio.insecure_channel(address) as channel:
            stub = router_service_pb2_grpc.RouterServiceStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=20)

            async def follow_health() -> None:
                try:
                    async for update in watch:
                        seen.append(update.status)
                except grpc.aio.AioRpcError:
                    pass  # the stream ends when the server does

            follower = asyncio.create_task(follow_health())

            t0 = time.monotonic()
            finishes: list[float] = []

            async def chat(i: int) -> tuple[str, grpc.StatusCode]:
                rid = uuid.uuid4().hex
                try:
                    await stub.Chat(pb.ChatRequest(user_id=f"{prefix}{i}", message=MESSAGES[2],
                                                   request_id=rid), timeout=15)
                except grpc.aio.AioRpcError as exc:
                    return rid, exc.code()
                finishes.append(time.monotonic() - t0)
                return rid, grpc.StatusCode.OK

            responses = upstream_requests(suite, "POST /v1/responses")
            in_flight = [asyncio.create_task(chat(i)) for i in range(20)]

            async def all_at_the_upstream() -> bool:
                got = await asyncio.to_thread(upstream_requests, suite, "POST /v1/responses")
                return got - responses >= 20

            await eventually(all_at_the_upstream, what="the 20 turns waiting on the slow upstream")
            assert not any(t.done() for t in in_flight)
            victim = suite.services["router"].pid
            assert victim is not None
            os.kill(victim, signal.SIGTERM)
            await eventually(lambda: health_pb2.HealthCheckResponse.NOT_SERVING in seen,
                             what=lambda: f"health NOT_SERVING (seen {seen})")  # draining now

            async def refusing() -> bool:  # a user outside the prefix: not in the ledger check
                try:
                    await stub.Chat(pb.ChatRequest(user_id=f"probe-{uuid.uuid4().hex[:6]}",
                                                   message="hey"), timeout=15)
                except grpc.aio.AioRpcError as exc:
                    return exc.code() == grpc.StatusCode.UNAVAILABLE
                return False

            await eventually(refusing, what="new calls refused while draining")
            refused = [await chat(100 + i) for i in range(5)]
            drained = await asyncio.gather(*in_flight)
            follower.cancel()

        assert [code for _, code in drained] == [grpc.StatusCode.OK] * 20, drained
        assert {code for _, code in refused} == {grpc.StatusCode.UNAVAILABLE}, refused
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen, seen
        answered = {rid for rid, _ in drained}
        await recorded_in_ledger(pg_url, prefix, len(answered), timeout=20)
        assert set(await ledger_request_ids(pg_url, prefix)) == answered

        # The supervisor restarts the router; it serves again.
        set_upstream_fault(suite, {"mode": "none"})
        started = time.monotonic()

        async def serving_again() -> bool:
            try:
                async with grpc.aio.insecure_channel(address) as channel:
                    await router_service_pb2_grpc.RouterServiceStub(channel).Chat(
                        pb.ChatRequest(user_id=prefix + "after", message="hey"), timeout=5)
            except grpc.aio.AioRpcError:
                return False
            return True

        await eventually(serving_again, timeout=60, interval=0.2, what="the router back")
        print(f"\nSIGTERM under load: 20 in-flight calls finished OK (last {max(finishes):.1f}s "
              f"after they were sent), 5 new calls UNAVAILABLE, "
              f"health {[health_pb2.HealthCheckResponse.ServingStatus.Name(s) for s in seen]}, "
              f"router back after {time.monotonic() - started:.1f}s")
