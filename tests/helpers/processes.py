"""The suite as real processes (services.suite, what `make up` runs) on free ports, and a load
of concurrent users that records what each message got."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import grpc
from coach.router.v1 import router_service_pb2 as pb
from coach.router.v1 import router_service_pb2_grpc
from coach.type.v1 import types_pb2

from services.suite.config import SuiteSettings
from services.suite.ports import free_port
from services.suite.suite import Suite as ProcessSuite


@contextlib.asynccontextmanager
async def process_suite(database_url: str, data_dir: Path, log_dir: Path,
                        extra: Mapping[str, str] | None = None) -> AsyncIterator[ProcessSuite]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COACH_", "OPENAI_")) and k != "DATABASE_URL"}
    env.update({
        "DATABASE_URL": database_url,
        "COACH_DATA_DIR": str(data_dir),
        "COACH_OFFLINE_OPENAI_ADDR": f"127.0.0.1:{free_port()}",
        "COACH_SHUTDOWN_GRACE_SECONDS": "5",
        "COACH_LOG_LEVEL": "WARNING",
        **{f"COACH_{n.upper()}_ADDR": f"127.0.0.1:{free_port()}"
           for n in ("router", "llm", "threads", "ledger")},
        **{f"COACH_{n.upper()}_METRICS_PORT": "0" for n in ("router", "llm", "threads", "ledger")},
        **(extra or {}),
    })
    log_dir.mkdir(parents=True, exist_ok=True)
    suite = ProcessSuite(SuiteSettings.from_env(env), log_dir=log_dir)
    await suite.start()
    try:
        yield suite
    finally:
        await suite.stop()


def upstream_requests(suite: ProcessSuite, endpoint: str) -> int:
    """How many requests the suite's offline server got on ``endpoint`` ("POST /v1/responses")."""
    url = f"{suite.offline_base_url.removesuffix('/v1')}/_control/stats"  # type: ignore[union-attr]
    with urllib.request.urlopen(url, timeout=5) as reply:
        return int(json.loads(reply.read())["requests"].get(endpoint, 0))


def set_upstream_fault(suite: ProcessSuite, plan: dict[str, object]) -> None:
    url = f"{suite.offline_base_url.removesuffix('/v1')}/_control/faults"  # type: ignore[union-attr]
    request = urllib.request.Request(url, data=json.dumps(plan).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        reply.read()


MESSAGES = (
    "hey",  # canned
    "quick q: is it ok to train two days in a row?",  # cheap tier
    "I keep failing at my morning runs and I feel like giving up, what should I change?",
)


@dataclass
class Outcome:
    user: str
    request_id: str
    code: grpc.StatusCode
    reason: str = ""
    started: float = 0.0
    elapsed: float = 0.0


@dataclass
class Load:
    """``users`` concurrent users, each sending one message after another until stopped."""

    address: str
    prefix: str
    users: int = 50
    timeout: float = 15.0
    # Each user's think time between messages: the load's rate, a shape of the scenario and not
    # a wait for anything.
    pause: float = 0.05
    # Lockstep rounds instead: each user's next message waits for every user's previous one,
    # so all of a round's messages land at once (a synchronized burst, the hardest moment for
    # a database restart to fall on).
    lockstep: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Self:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = router_service_pb2_grpc.RouterServiceStub(self.channel)
        self._round = asyncio.Barrier(self.users)
        self._tasks = [asyncio.create_task(self._user(i)) for i in range(self.users)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await self._round.abort()
        await asyncio.gather(*self._tasks)
        await self.channel.close()

    async def _user(self, index: int) -> None:
        user = f"{self.prefix}{index}"
        n = 0
        while not self._stop.is_set():
            rid = uuid.uuid4().hex
            request = pb.ChatRequest(user_id=user, message=MESSAGES[(n + index) % 3],
                                     request_id=rid, context=types_pb2.UserContext(local_hour=10))
            started = time.monotonic()
            try:
                await self.stub.Chat(request, timeout=self.timeout)
                self.outcomes.append(Outcome(user, rid, grpc.StatusCode.OK, "", started,
                                             time.monotonic() - started))
            except grpc.aio.AioRpcError as exc:
                self.outcomes.append(Outcome(user, rid, exc.code(), exc.details() or "", started,
                                             time.monotonic() - started))
            n += 1
            if not self.lockstep:
                await asyncio.sleep(self.pause)
                continue
            try:
                await self._round.wait()
            except asyncio.BrokenBarrierError:
                return

    def ok_ids(self) -> set[str]:
        return {o.request_id for o in self.outcomes if o.code == grpc.StatusCode.OK}

    def codes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.code.name] = counts.get(o.code.name, 0) + 1
        return counts
