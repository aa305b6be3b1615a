"""The server interceptor: request ids, auth, error mapping, metrics, spans.

Every RPC but health:
- takes ``x-request-id`` from metadata (or makes one) into ``request_id_var``;
- checks ``authorization: Bearer <token>`` in constant time when a token is set;
- maps ``CoachError`` to its status code with rich details (``rich_status``), transient
  database errors to UNAVAILABLE, anything else to INTERNAL (logged with a traceback);
- logs one JSON line and records metrics.
The client side (token and request id on every call to a peer) is ``peer_channel``.
"""

from __future__ import annotations

import hmac
import logging
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from services.common import tracing
from services.common.deadlines import deadline_var, set_deadline
from services.common.errors import CoachError, InvalidArgument, Unauthenticated, Unavailable
from services.common.logs import request_id_var
from services.common.metrics import RPC_IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS
from services.common.rich_status import status_for

log = logging.getLogger("coach.rpc")

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def _is_transient_db_error(exc: BaseException) -> bool:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        return False
    transient = (
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.exceptions.InterfaceError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.TooManyConnectionsError,
        # A session the server ends mid-operation (PostgreSQL stopping) now and then surfaces
        # as "cannot switch to state 12; another operation is in progress" rather than as a
        # closed connection (asyncpg issue 1069); the pool then terminates that connection.
        asyncpg.exceptions.InternalClientError,
        ConnectionError,
        OSError,
        TimeoutError,
    )
    return isinstance(exc, transient)


def _is_bad_data_error(exc: BaseException) -> bool:
    """A value the database cannot hold (NUL in text, a number out of range): the caller's
    input, which validation should have caught. INVALID_ARGUMENT, never INTERNAL."""
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, asyncpg.exceptions.DataError)



def metadata_safe(value: str, limit: int = 256) -> str:
    """``value`` as a gRPC metadata value (printable ASCII): other characters percent-encoded.

    A request_id is any string; forwarded as-is in ``x-request-id`` a control or non-ASCII
    character would make every call to a peer fail on the client side."""
    if value.isascii() and value.isprintable() and len(value) <= limit:
        return value
    return urllib.parse.quote(value, safe="")[:limit]


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """The whole server-side chain in one interceptor, with per-method work done once.

    Each unary method's wrapped handler (its short name, metric children, error mapping) is
    built on its first call and reused; a call then costs a metadata scan, the auth check,
    two context variables and the metrics.
    """

    def __init__(self, auth_token: str | None, service: str = "") -> None:
        self._expected = f"Bearer {auth_token}".encode() if auth_token else None
        self._service = service
        # method -> (the handler it wraps, the wrapped handler)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        if self._expected is not None and not self._authorized(
            handler_call_details.invocation_metadata
        ):
            return _reject_unauthenticated(handler)
        if handler.unary_unary is None:
            return handler  # streaming (reflection): auth checked above, nothing else to wrap
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            _wrap_unary(method, handler.unary_unary, self._service),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _authorized(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        given: Any = ""
        for key, value in metadata or ():
            if key == "authorization":
                given = value  # the last one wins, as in a dict of the metadata
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        assert self._expected is not None
        return hmac.compare_digest(given_bytes, self._expected)


_UNAUTHENTICATED_MESSAGE = "missing or wrong bearer token in `authorization: Bearer <token>`"


def _reject_unauthenticated(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    rich = status_for(Unauthenticated(_UNAUTHENTICATED_MESSAGE))

    async def deny_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        RPC_REQUESTS.labels("unauthenticated", "UNAUTHENTICATED").inc()
        await context.abort(rich.code, rich.details, rich.trailing_metadata)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(rich.code, rich.details, rich.trailing_metadata)
        yield  # pragma: no cover

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            deny_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream is not None:
        async def deny_stream_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(rich.code, rich.details, rich.trailing_metadata)
            yield  # pragma: no cover

        return grpc.stream_stream_rpc_method_handler(
            deny_stream_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            deny_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler


def _wrap_unary(
    method: str,
    inner: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    service: str = "",
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """``inner`` with request ids, deadlines, error mapping, metrics and (when on) a span.

    Built once per method; the metadata of each call comes from its context."""
    short = method.rsplit("/", 1)[-1]
    latency = RPC_LATENCY.labels(short)
    ok_count = RPC_REQUESTS.labels(short, "OK")
    in_flight = RPC_IN_FLIGHT.labels(short)

    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = context.invocation_metadata() or ()
        if not tracing.enabled():
            return await handle(request, context, metadata, None)
        with tracing.server_span(service, method, dict(metadata)) as span:
            return await handle(request, context, metadata, span)

    async def handle(
        request: Any, context: grpc.aio.ServicerContext, metadata: Sequence[tuple[str, Any]],
        span: Any,
    ) -> Any:
        rid: Any = None
        for key, value in metadata:
            if key == "x-request-id":
                rid = value  # the last one wins, as in a dict of the metadata
        rid = rid or getattr(request, "request_id", "") or uuid.uuid4().hex
        token = request_id_var.set(metadata_safe(str(rid)))
        deadline_token = set_deadline(context.time_remaining())
        started = time.perf_counter()
        code = "OK"
        in_flight.inc()
        try:
            return await inner(request, context)
        except CoachError as known:
            code = known.code
            rich = status_for(known)
            log.info("rpc failed", extra={"method": short, "code": code, "reason": known.reason,
                                           "error": known.message})
            await context.abort(rich.code, rich.details, rich.trailing_metadata)
        except grpc.aio.AbortError:
            code = context.code().name if context.code() else "ABORTED"  # type: ignore[union-attr]
            raise
        except Exception as exc:
            mapped: CoachError
            if _is_bad_data_error(exc):
                code = "INVALID_ARGUMENT"
                mapped = InvalidArgument(
                    "a value in this request cannot be stored; check the text and numbers",
                    reason="UNSTORABLE_VALUE",
                )
                log.warning("unstorable value", extra={"method": short, "error": repr(exc)})
            elif _is_transient_db_error(exc):
                code = "UNAVAILABLE"
                mapped = Unavailable(
                    "the database is unavailable; retry shortly",
                    reason="DATABASE_UNAVAILABLE",
                    retry_after_s=1.0,
                )
                log.warning("database unavailable", extra={"method": short, "error": repr(exc)})
            else:
                code = "INTERNAL"
                mapped = CoachError("internal error; it was logged with this request id",
                                 reason="INTERNAL", metadata={"request_id": str(rid)})
                log.exception("rpc crashed", extra={"method": short})
            rich = status_for(mapped)
            await context.abort(rich.code, rich.details, rich.trailing_metadata)
        finally:
            in_flight.dec()
            elapsed = time.perf_counter() - started
            if code == "OK":
                ok_count.inc()
            else:
                RPC_REQUESTS.labels(short, code).inc()
            latency.observe(elapsed)
            if span is not None:
                tracing.set_code(span, code)
            if code == "OK" and log.isEnabledFor(logging.DEBUG):
                log.debug("rpc", extra={"method": short, "code": code, "latency_ms": round(elapsed * 1e3, 3)})
            request_id_var.reset(token)
            deadline_var.reset(deadline_token)

    return wrapper
