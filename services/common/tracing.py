"""OpenTelemetry traces across the four services, only when an exporter is configured.

``setup_tracing(service)`` (called by ``run_service``) installs a tracer provider when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (OTLP over gRPC; the SDK reads the standard
``OTEL_EXPORTER_OTLP_*`` variables) or ``OTEL_TRACES_EXPORTER`` is ``otlp`` or ``console``.
Otherwise nothing is set up and the interceptors skip tracing entirely: one ``is None`` check
per call.

The interceptors make one SERVER span per RPC (parent taken from the W3C ``traceparent`` in
the incoming metadata) and one CLIENT span per call to a peer (``traceparent`` injected into the
outgoing metadata), so a stateful Chat is one trace: router -> threads -> llm (-> ledger).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: Tracer | None = None


def configure(provider: trace.TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (None: stop tracing). Tests pass their own."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("coach")


def enabled() -> bool:
    return _tracer is not None


def setup_tracing(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """A tracer provider for ``service`` when the environment names an exporter; else nothing."""
    env = os.environ if environ is None else environ
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if exporter_name == "none" or not (endpoint or exporter_name in ("otlp", "console")):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create({"service.name": f"coach-{service}", "service.namespace": "coach"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    configure(provider)
    log.info("tracing on", extra={"exporter": exporter_name or "otlp", "endpoint": endpoint})
    return True


def _text(metadata: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if isinstance(v, str)}


@contextmanager
def server_span(service: str, method: str, metadata: Mapping[str, Any]) -> Iterator[Span]:
    """The SERVER span of one RPC, child of the caller's ``traceparent`` if it sent one."""
    assert _tracer is not None
    parent = _PROPAGATOR.extract(carrier=_text(metadata))
    short = method.rsplit("/", 1)[-1]
    with _tracer.start_as_current_span(
        f"{service} {short}", context=parent, kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.method": short,
                    "rpc.service": method.strip("/").split("/", 1)[0], "coach.service": service},
    ) as span:
        yield span


@contextmanager
def client_span(method: str, carrier: MutableMapping[str, str]) -> Iterator[Span]:
    """The CLIENT span of one call to a peer; its ``traceparent`` goes into ``carrier``."""
    assert _tracer is not None
    short = method.rsplit("/", 1)[-1]
    with _tracer.start_as_current_span(
        f"call {short}", kind=SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.method": short,
                    "rpc.service": method.strip("/").split("/", 1)[0]},
    ) as span:
        _PROPAGATOR.inject(carrier)
        yield span


def set_code(span: Span, code: str) -> None:
    span.set_attribute("rpc.grpc.status_code", code)
    if code != "OK":
        span.set_status(Status(StatusCode.ERROR, code))
