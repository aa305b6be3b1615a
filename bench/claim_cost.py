"""What claiming a request id costs a canned reply: the one call to threads it adds.

One suite (one of each service, 0 ms upstream), one user with state cached in the router;
canned messages one at a time, in interleaved rounds, with a request id of the caller's
(claimed in threads before deciding) and without one (the router makes one up: nobody
else can have answered it, so nothing is claimed).

    .venv/bin/python -m bench.claim_cost
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import grpc
from coach.router.v1 import router_service_pb2, router_service_pb2_grpc
from coach.type.v1 import types_pb2

from bench.harness import BenchSuite
from bench.replay import percentile


async def main_async(rounds: int, per_round: int) -> None:
    suite = BenchSuite("claim-cost")
    await suite.start()
    try:
        async with grpc.aio.insecure_channel(suite.address("router")) as channel:
            stub = router_service_pb2_grpc.RouterServiceStub(channel)
            context = types_pb2.UserContext(local_hour=9, display_name="Sam")
            user = f"claim-{uuid.uuid4().hex[:6]}"
            times: dict[str, list[float]] = {"with request id (claimed)": [],
                                             "without (not claimed)": []}
            for n in range(per_round):  # past onboarding, state cached
                await stub.Chat(router_service_pb2.ChatRequest(
                    user_id=user, message="hey", request_id=uuid.uuid4().hex, context=context))
            for r in range(rounds):
                for name in sorted(times, key=lambda k: (hash(k) + r) % 2):
                    for _ in range(per_round):
                        rid = uuid.uuid4().hex if name.startswith("with ") else ""
                        t0 = time.perf_counter()
                        await stub.Chat(router_service_pb2.ChatRequest(
                            user_id=user, message="hey", request_id=rid, context=context))
                        times[name].append((time.perf_counter() - t0) * 1000)
            for name, values in times.items():
                print(f"canned Chat {name}: p50 {percentile(values, 0.5):.2f} ms, "
                      f"p99 {percentile(values, 0.99):.2f} ms ({len(values)} calls)")
    finally:
        await suite.stop()


if __name__ == "__main__":
    asyncio.run(main_async(rounds=10, per_round=30))
    sys.exit(0)
