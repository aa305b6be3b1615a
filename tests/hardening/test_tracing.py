"""OpenTelemetry: one trace spans router -> threads -> llm for a stateful Chat when an exporter is
configured; nothing is traced when none is."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from coach.router.v1 import router_service_pb2 as pb
from coach.type.v1 import types_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.common import tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    yield exporter
    tracing.configure(None)
    provider.shutdown()


def test_no_exporter_configured_means_no_tracing() -> None:
    assert tracing.setup_tracing("router", {}) is False
    assert tracing.setup_tracing("router", {"OTEL_TRACES_EXPORTER": "none",
                                            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}) is False
    assert not tracing.enabled()


async def test_one_trace_spans_router_threads_and_llm(hardened: Any,
                                                     spans: InMemorySpanExporter) -> None:
    _, stubs = hardened
    reply = await stubs.router.Chat(pb.ChatRequest(
        user_id=f"trace-{uuid.uuid4().hex[:8]}", request_id=uuid.uuid4().hex,
        message="I keep failing at my morning runs and I feel like giving up, what should I change?"),
        timeout=20)
    assert reply.route == types_pb2.ROUTE_ASSISTANT
    finished: list[Any] = list(spans.get_finished_spans())
    chat = [s for s in finished if s.name == "router Chat"]
    assert len(chat) == 1 and chat[0].kind == SpanKind.SERVER
    trace_id = chat[0].context.trace_id
    in_trace = [s for s in finished if s.context.trace_id == trace_id]
    servers = {s.attributes["coach.service"] for s in in_trace if s.kind == SpanKind.SERVER}
    assert {"router", "threads", "llm"} <= servers, sorted(s.name for s in in_trace)

    by_id = {s.context.span_id: s for s in in_trace}

    def chain(span: Any) -> list[str]:
        names = [span.name]
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    turn = next(s for s in in_trace if s.name == "llm StatefulTurn")
    # llm StatefulTurn <- threads' call <- threads RunStatefulTurn <- router's call <- router Chat
    assert chain(turn) == ["llm StatefulTurn", "call StatefulTurn", "threads RunStatefulTurn",
                           "call RunStatefulTurn", "router Chat"], chain(turn)
    assert all(s.attributes.get("rpc.grpc.status_code") == "OK" for s in in_trace
               if "rpc.grpc.status_code" in s.attributes)
