"""Running the suite for the bench: isolated ports and data, clients, scraping stats.

``BenchSuite`` starts the whole suite through ``services.suite.Suite`` (PostgreSQL,
the offline OpenAI server, ledger, llm, threads, router: real processes) on free
ports of its own, with a fresh data directory under ``.coach/bench/<name>``, so it
never clashes with a running ``make up`` and every run starts from an empty ledger.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from coach.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from coach.router.v1 import router_service_pb2, router_service_pb2_grpc
from coach.type.v1 import types_pb2
from prometheus_client.parser import text_string_to_metric_families

from services.common.settings import REPO_ROOT
from services.suite.config import SERVICES, SuiteSettings
from services.suite.health import SERVING, wait_serving
from services.suite.ports import free_ports
from services.suite.suite import Suite

BENCH_DIR = REPO_ROOT / ".coach" / "bench"
# Variables of the caller's environment that would point the suite elsewhere.
_DROPPED = ("DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "COACH_DATA_DIR",
            "COACH_AUTH_TOKEN", "COACH_USER_DAILY_MESSAGES", "COACH_USER_DAILY_BUDGET_USD",
            "COACH_POLICY", "COACH_STATEFUL_API", "OFFLINE_OPENAI_LATENCY_MS")


@dataclass
class BenchSuite:
    name: str
    policy: str = "optimized"
    stateful_api: str = "responses"
    latency_ms: int = 0
    extra_env: Mapping[str, str] = field(default_factory=dict)
    suite: Suite | None = None
    metrics_ports: dict[str, int] = field(default_factory=dict)
    offline_addr: str = ""
    started_s: float = 0.0
    _http: aiohttp.ClientSession | None = None

    @property
    def data_dir(self) -> Path:
        return BENCH_DIR / self.name

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def address(self, service: str) -> str:
        assert self.suite is not None
        return self.suite.addresses[service]

    async def start(self) -> None:
        t0 = time.perf_counter()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
        ports = free_ports(2 * len(SERVICES) + 1)
        for i, name in enumerate(SERVICES):
            env[f"COACH_{name.upper()}_ADDR"] = f"127.0.0.1:{ports[i]}"
            env[f"COACH_{name.upper()}_METRICS_PORT"] = str(ports[len(SERVICES) + i])
            self.metrics_ports[name] = ports[len(SERVICES) + i]
        self.offline_addr = f"127.0.0.1:{ports[-1]}"
        env.update({
            "COACH_OFFLINE_OPENAI_ADDR": self.offline_addr,
            "COACH_DATA_DIR": str(self.data_dir),
            "COACH_POLICY": self.policy,
            "COACH_STATEFUL_API": self.stateful_api,
            "OFFLINE_OPENAI_LATENCY_MS": str(self.latency_ms),
            "COACH_SHUTDOWN_GRACE_SECONDS": "3",
            **self.extra_env,
        })
        self.suite = Suite(SuiteSettings.from_env(env), log_dir=self.log_dir)
        await self.suite.start()
        self.started_s = time.perf_counter() - t0

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self.suite is not None:
            await self.suite.stop()

    async def offline_set_clock(self, now: float) -> None:
        """Simulated time on the offline server (its prompt cache expires on this clock)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        async with self._http.post(f"http://{self.offline_addr}/_control/clock",
                                   json={"now": now}) as resp:
            resp.raise_for_status()
            await resp.read()

    # -- reading what the suite says about itself ---------------------------------------------

    async def offline_stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://{self.offline_addr}/_control/stats") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def offline_reset(self) -> None:
        async with aiohttp.ClientSession() as http, \
                http.post(f"http://{self.offline_addr}/_control/reset") as resp:
            await resp.read()

    async def rpc_histograms(self) -> dict[tuple[str, str], Histo]:
        """(service, method) -> coach_rpc_latency_seconds histogram, from each /metrics."""
        return histograms(await self.scrape(), "coach_rpc_latency_seconds", "method")

    async def scrape(self) -> dict[str, str]:
        """service -> the text of its /metrics (services that do not answer are left out)."""
        out: dict[str, str] = {}
        async with aiohttp.ClientSession() as http:
            for service, port in self.metrics_ports.items():
                try:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        out[service] = await resp.text()
                except aiohttp.ClientError:
                    continue
        return out

    async def cost_report(self, start_date: str, end_date: str) -> ledger_service_pb2.GetCostReportResponse:
        async with grpc.aio.insecure_channel(self.address("ledger")) as channel:
            stub = ledger_service_pb2_grpc.LedgerServiceStub(channel)
            return await stub.GetCostReport(
                ledger_service_pb2.GetCostReportRequest(start_date=start_date, end_date=end_date),
                timeout=10,
            )

    async def wait_ledger(self, calls: int, start_date: str, end_date: str,
                          timeout: float = 60.0) -> ledger_service_pb2.GetCostReportResponse:
        """The cost report once it holds ``calls`` answers (records travel by an outbox)."""
        deadline = time.monotonic() + timeout
        while True:
            report = await self.cost_report(start_date, end_date)
            if report.total_calls >= calls or time.monotonic() > deadline:
                return report
            await asyncio.sleep(0.2)


@dataclass
class Histo:
    sum: float = 0.0
    count: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def minus(self, before: Histo | None) -> Histo:
        if before is None:
            return self
        return Histo(self.sum - before.sum, self.count - before.count,
                     {le: v - before.buckets.get(le, 0.0) for le, v in self.buckets.items()})

    @property
    def mean_ms(self) -> float:
        return 1000 * self.sum / self.count if self.count else 0.0

    def quantile_ms(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (what Prometheus can tell)."""
        if not self.count:
            return 0.0
        for le in sorted(self.buckets):
            if self.buckets[le] >= q * self.count:
                return 1000 * le
        return float("inf")


def histograms(scraped: Mapping[str, str], family_name: str,
               label: str) -> dict[tuple[str, str], Histo]:
    """(service, the series' ``label``) -> that histogram family's series, from scraped
    /metrics texts (series that differ only in other labels are added up)."""
    out: dict[tuple[str, str], Histo] = {}
    for service, text in scraped.items():
        for family in text_string_to_metric_families(text):
            if family.name != family_name:
                continue
            for sample in family.samples:
                h = out.setdefault((service, sample.labels.get(label, "")), Histo())
                if sample.name.endswith("_sum"):
                    h.sum += sample.value
                elif sample.name.endswith("_count"):
                    h.count += sample.value
                elif sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    h.buckets[le] = h.buckets.get(le, 0.0) + sample.value
    return out


def histo_delta(after: dict[tuple[str, str], Histo],
                before: dict[tuple[str, str], Histo]) -> dict[tuple[str, str], Histo]:
    return {k: h.minus(before.get(k)) for k, h in after.items()}


# -- clients ----------------------------------------------------------------------------------

class RouterClient:
    """Router.Chat over a few grpc.aio channels (round robin), as a gateway would call it."""

    def __init__(self, address: str, channels: int = 2) -> None:
        self.channels = [grpc.aio.insecure_channel(address) for _ in range(channels)]
        self.stubs = [router_service_pb2_grpc.RouterServiceStub(c) for c in self.channels]
        self._next = 0

    def stub(self) -> router_service_pb2_grpc.RouterServiceStub:
        self._next = (self._next + 1) % len(self.stubs)
        return self.stubs[self._next]

    async def chat(self, user_id: str, text: str, *, request_id: str, local_hour: int,
                   streak: int, display_name: str, timeout: float) -> router_service_pb2.ChatResponse:
        return await self.stub().Chat(
            router_service_pb2.ChatRequest(
                user_id=user_id, message=text, request_id=request_id,
                context=types_pb2.UserContext(display_name=display_name, current_streak=streak,
                                              local_hour=local_hour),
            ),
            timeout=timeout,
        )

    async def close(self) -> None:
        for c in self.channels:
            await c.close()


class BareHealth:
    """bench/bare_health.py as a separate process (``args``: its role, see that module)."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.port = free_ports(1)[0]
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.bare_health", "--port", str(self.port), *self.args,
            cwd=REPO_ROOT)
        status = await wait_serving(self.address, timeout=20)
        if status != SERVING:
            raise RuntimeError(f"bare health server {' '.join(self.args)} did not start: {status}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


class Floor:
    """The cheap tier's path with none of the suite's code: two bare servers in a chain,
    the second calling ``upstream_url`` (bench/bare_health.py); Check the head."""

    def __init__(self, upstream_url: str) -> None:
        self.tail = BareHealth("--upstream", upstream_url)
        self.head = BareHealth("--forward", self.tail.address)

    @property
    def address(self) -> str:
        return self.head.address

    async def start(self) -> None:
        await self.tail.start()
        await self.head.start()

    async def stop(self) -> None:
        await self.head.stop()
        await self.tail.stop()
