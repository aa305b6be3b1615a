"""Each service serves Prometheus metrics on its own port: requests by method and code, latency
histograms, routes, tokens and cost by model, savings, upstream errors, breaker, ledger backlog."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import grpc
from coach.router.v1 import router_service_pb2 as pb
from coach.router.v1 import router_service_pb2_grpc
from coach.type.v1 import types_pb2
from prometheus_client.parser import text_string_to_metric_families

from services.suite.ports import free_ports
from tests.helpers.polling import eventually
from tests.helpers.processes import process_suite, set_upstream_fault
from tests.helpers.status import recorded_in_ledger

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if all(got.get(k) == w for k, w in labels.items()))


async def test_each_service_serves_its_metrics(pg_url: str, tmp_path: Path) -> None:
    # Below the ephemeral range: no outgoing connection takes one before its service binds it
    # (a service that cannot bind its metrics port serves on without metrics).
    names = ("router", "llm", "threads", "ledger")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {f"COACH_{n.upper()}_METRICS_PORT": str(p) for n, p in ports.items()}
    env["COACH_ONBOARDING_MESSAGES"] = "0"
    prefix = f"metrics-{uuid.uuid4().hex[:6]}-"
    async with process_suite(pg_url, tmp_path / "data", tmp_path / "logs", env) as suite:
        async with grpc.aio.insecure_channel(suite.addresses["router"]) as channel:
            router = router_service_pb2_grpc.RouterServiceStub(channel)
            routes = []
            for i, text in enumerate(("hey", "quick q: is it ok to train two days in a row?",
                                      "I keep failing at my runs and feel like giving up, help?")):
                reply = await router.Chat(pb.ChatRequest(
                    user_id=f"{prefix}{i}", message=text, request_id=uuid.uuid4().hex,
                    context=types_pb2.UserContext(local_hour=9)), timeout=20)
                routes.append(reply.route)
            assert routes == [types_pb2.ROUTE_PATTERN, types_pb2.ROUTE_COMPLETIONS,
                              types_pb2.ROUTE_ASSISTANT]
            # One passing upstream 500: retried, answered, and counted as an upstream error.
            set_upstream_fault(suite, {"mode": "error_500", "count": 1})
            await router.Chat(pb.ChatRequest(user_id=f"{prefix}3", request_id=uuid.uuid4().hex,
                                             message="quick q: how much water should I drink?"),
                              timeout=20)
            bad = pb.ChatRequest(user_id=f"{prefix}4", message=" ")
            try:
                await router.Chat(bad, timeout=5)
            except grpc.aio.AioRpcError:
                pass
        await recorded_in_ledger(pg_url, prefix, 4)

        async def settled() -> dict[str, Samples] | None:
            """Every service's metrics once the four answers are counted everywhere: the
            ledger recorded them, threads' backlog gauge (refreshed about once a second)
            is back to 0."""
            m = {name: await asyncio.to_thread(scrape, port) for name, port in ports.items()}
            done = (value(m["ledger"], "coach_ledger_answers_total") >= 4
                    and "coach_ledger_backlog" in m["threads"]
                    and value(m["threads"], "coach_ledger_backlog") == 0)
            return m if done else None

        m = await eventually(settled, interval=0.2, what="the answers counted in the metrics")

    router_m, llm_m, threads_m, ledger_m = m["router"], m["llm"], m["threads"], m["ledger"]
    # Requests by method and code, and latency histograms, on every service.
    assert value(router_m, "coach_rpc_requests_total", method="Chat", code="OK") == 4
    assert value(router_m, "coach_rpc_requests_total", method="Chat", code="INVALID_ARGUMENT") == 1
    assert value(router_m, "coach_rpc_latency_seconds_count", method="Chat") == 5
    assert value(router_m, "coach_rpc_in_flight", method="Chat") == 0  # all answered
    assert value(router_m, "coach_rpc_latency_seconds_bucket", method="Chat", le="+Inf") == 5
    assert 0 < value(router_m, "coach_rpc_latency_seconds_sum", method="Chat") < 60
    assert value(threads_m, "coach_rpc_requests_total", method="RunStatefulTurn", code="OK") == 1
    assert value(llm_m, "coach_rpc_requests_total", method="Complete", code="OK") == 2
    assert value(ledger_m, "coach_rpc_requests_total", method="RecordAnswers", code="OK") >= 1
    # The callers' side of the same calls, and each upstream attempt with its outcome: the
    # router saw llm's two Completes take at least as long as llm did (the difference is the hop).
    assert value(router_m, "coach_peer_call_seconds_count", method="Complete") == 2
    assert (value(router_m, "coach_peer_call_seconds_sum", method="Complete")
            >= value(llm_m, "coach_rpc_latency_seconds_sum", method="Complete") > 0)
    assert value(router_m, "coach_peer_call_seconds_count", method="RunStatefulTurn") == 1
    assert value(threads_m, "coach_peer_call_seconds_count", method="StatefulTurn") >= 1
    assert value(llm_m, "coach_upstream_attempt_seconds_count", api="chat.completions",
                 outcome="ok") >= 2
    assert value(llm_m, "coach_upstream_attempt_seconds_count", api="chat.completions",
                 outcome="server_error") == 1
    # Routes (router), tokens by model (llm), cost by model and route and savings (ledger).
    for route in ("PATTERN", "COMPLETIONS", "ASSISTANT"):
        assert value(router_m, "coach_routes_total", route=route) >= 1, route
        assert value(ledger_m, "coach_ledger_answers_total", route=route) >= 1, route
    assert value(llm_m, "coach_tokens_total", kind="input") > 0
    assert value(llm_m, "coach_tokens_total", kind="output") > 0
    models = {labels["model"] for labels, _ in llm_m["coach_tokens_total"]}
    assert models and all(value(ledger_m, "coach_cost_usd_nanos_total", model=x) > 0 for x in models)
    actual = value(ledger_m, "coach_answer_cost_usd_nanos_total")
    baseline = value(ledger_m, "coach_baseline_cost_usd_nanos_total")
    assert value(ledger_m, "coach_answer_cost_usd_nanos_total", route="PATTERN") == 0
    assert 0 < actual < baseline, (actual, baseline)  # canned and cheap answers saved money
    assert value(ledger_m, "coach_ledger_records_total", outcome="recorded") == 4
    # Upstream errors and the breaker (llm), the ledger backlog (threads).
    assert value(llm_m, "coach_upstream_errors_total") >= 1
    assert {labels["upstream"] for labels, _ in llm_m["coach_breaker_open"]} >= {"cheap", "stateful"}
    assert value(llm_m, "coach_breaker_open") == 0
    assert "coach_ledger_backlog" in threads_m and value(threads_m, "coach_ledger_backlog") == 0
    # Each process serves its own registry: the router's has no ledger records.
    assert value(router_m, "coach_ledger_records_total") == 0
