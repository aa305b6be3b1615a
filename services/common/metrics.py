"""Prometheus metrics shared by the four services.

Each process serves its own registry on its own HTTP port
(COACH_<SERVICE>_METRICS_PORT). Service-specific metrics live here too, so
names stay consistent and nothing is declared twice.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

RPC_REQUESTS = Counter(
    "coach_rpc_requests_total", "RPCs served, by method and status code", ["method", "code"]
)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                   30)
RPC_LATENCY = Histogram(
    "coach_rpc_latency_seconds", "RPC latency as the server saw it", ["method"],
    buckets=LATENCY_BUCKETS,
)
# What each method is serving now: a queue building up (or a call waiting on purpose, such as
# a claim waiting for another router's answer) shows here before it shows in the latency.
RPC_IN_FLIGHT = Gauge("coach_rpc_in_flight", "RPCs being served now, by method", ["method"])
# The caller's side of the same calls: minus the callee's coach_rpc_latency_seconds, what the
# hop itself costs (serialization, gRPC, the network, waiting for the callee's event loop).
PEER_CALL_LATENCY = Histogram(
    "coach_peer_call_seconds", "Unary calls to another coach service, as the caller saw them",
    ["method"], buckets=LATENCY_BUCKETS,
)
# Each HTTP attempt at the upstream as the llm service saw it (the SDK's request, the network,
# the upstream's answer): the upstream's share of llm's coach_rpc_latency_seconds.
UPSTREAM_LATENCY = Histogram(
    "coach_upstream_attempt_seconds",
    "Upstream API attempts as the llm service saw them, by API and outcome (ok or failure kind)",
    ["api", "outcome"], buckets=LATENCY_BUCKETS,
)
ROUTES = Counter("coach_routes_total", "Answers by route and message type", ["route", "message_type"])
CRISIS_EVENTS = Counter("coach_crisis_events_total", "Messages classified as crisis")
TOKENS = Counter("coach_tokens_total", "Upstream tokens by model and kind", ["model", "kind"])
COST_NANOS = Counter("coach_cost_usd_nanos_total", "Cost recorded by model (USD x 1e9)", ["model"])
TRUNCATED_ANSWERS = Counter(
    "coach_truncated_answers_total",
    "Answers cut off by max_output_tokens (a quality failure), by route", ["route"])
UNPRICED_CALLS = Counter("coach_unpriced_calls_total", "Calls on a model with no price", ["model"])
UPSTREAM_ERRORS = Counter(
    "coach_upstream_errors_total", "Upstream call failures by API and kind", ["api", "kind"]
)
BREAKER_STATE = Gauge(
    "coach_breaker_open", "1 while the upstream circuit breaker is open", ["upstream"]
)
LEDGER_RECORDS = Counter(
    "coach_ledger_records_total", "Answer records received by the ledger", ["outcome"]
)
# Recorded by the ledger, once per answer (duplicates not counted): what the answers cost, by
# route, and what the same messages would have cost under the baseline policy (every message
# on the stateful tier's strong model: docs/glossary.md). Savings = baseline - actual.
LEDGER_ANSWERS = Counter("coach_ledger_answers_total", "Answers recorded by the ledger, by route",
                         ["route"])
ANSWER_COST_NANOS = Counter(
    "coach_answer_cost_usd_nanos_total", "Cost of recorded answers by route (USD x 1e9)", ["route"]
)
BASELINE_COST_NANOS = Counter(
    "coach_baseline_cost_usd_nanos_total",
    "What the recorded answers would have cost under the baseline policy, by route (USD x 1e9)",
    ["route"],
)
LEDGER_BACKLOG = Gauge("coach_ledger_backlog", "Answer records not yet acknowledged by the ledger")
JOURNAL_PENDING = Gauge("coach_router_journal_pending",
                        "Answers journaled by the router, not yet stored in threads")
JOURNAL_STORED = Counter("coach_router_journal_stored_total",
                         "Journaled answers stored in threads by the router's write-behind")
CONVERSATIONS_DELETED = Counter(
    "coach_threads_conversations_deleted_total",
    "Provider conversations deleted upstream by threads' retirer (rotated out, or orphaned "
    "by a rotation whose mapping was not saved)")
USER_CACHE = Counter("coach_router_user_cache_total",
                     "Router user-state lookups by outcome (hit, miss, off)", ["outcome"])


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Serve /metrics on ``port`` in a background thread (no-op when None)."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
        log.info("metrics serving", extra={"metrics_port": port})
    except OSError as exc:  # a busy port must not take the service down
        log.warning("metrics port unavailable", extra={"metrics_port": port, "error": str(exc)})
