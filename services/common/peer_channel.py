"""The channel services call each other on: every call carries the bearer token and the
current request id, and each unary call is timed (``coach_peer_call_seconds``) and, when
tracing is on, gets a CLIENT span. A wrapper of the channel, not grpc.aio's client
interceptors (which cost an extra task and call object per call).
``services.common.clients.open_channel`` returns one.
"""

from __future__ import annotations

import time
from functools import partial
from types import TracebackType
from typing import Any, Self

import grpc

from services.common import tracing
from services.common.logs import request_id_var
from services.common.metrics import PEER_CALL_LATENCY


def _outgoing(metadata: Any, auth: tuple[str, str] | None) -> list[tuple[str, Any]]:
    """The caller's metadata plus the bearer token and the current request id."""
    outgoing = list(metadata or ())
    if auth:
        outgoing.append(auth)
    rid = request_id_var.get()
    if rid:
        outgoing.append(("x-request-id", rid))
    return outgoing


class _PeerUnaryUnary(grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[type-arg]
    """A unary method of a ``PeerChannel``: adds our metadata, then calls the real method."""

    def __init__(self, inner: grpc.aio.UnaryUnaryMultiCallable, method: str,  # type: ignore[type-arg]
                 auth: tuple[str, str] | None) -> None:
        self._inner = inner
        self._method = method
        self._auth = auth
        self._latency = PEER_CALL_LATENCY.labels(method.rsplit("/", 1)[-1])

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        started = time.perf_counter()
        outgoing = _outgoing(metadata, self._auth)
        if tracing.enabled():
            return self._traced(request, outgoing, timeout, credentials, wait_for_ready, compression,
                                started)
        call = self._inner(request, timeout=timeout, metadata=tuple(outgoing),
                           credentials=credentials, wait_for_ready=wait_for_ready,
                           compression=compression)
        # Timed to the end of the call, however it ends, without wrapping it in a coroutine.
        call.add_done_callback(partial(self._observe, started))
        return call

    def _observe(self, started: float, _call: Any = None) -> None:
        self._latency.observe(time.perf_counter() - started)

    async def _traced(self, request: Any, outgoing: list[tuple[str, Any]], timeout: float | None,
                      credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
                      compression: grpc.Compression | None, started: float) -> Any:
        carrier: dict[str, str] = {}
        with tracing.client_span(self._method, carrier) as span:
            outgoing.extend(carrier.items())
            try:
                response = await self._inner(
                    request, timeout=timeout, metadata=tuple(outgoing), credentials=credentials,
                    wait_for_ready=wait_for_ready, compression=compression)
            except grpc.aio.AioRpcError as exc:
                tracing.set_code(span, exc.code().name)
                raise
            finally:
                self._observe(started)
            tracing.set_code(span, "OK")
            return response


class _PeerUnaryStream(grpc.aio.UnaryStreamMultiCallable):  # type: ignore[type-arg]
    """A server-streaming method of a ``PeerChannel``: our metadata too (no span: a stream
    such as WatchUserChanges lives as long as the process)."""

    def __init__(self, inner: grpc.aio.UnaryStreamMultiCallable,  # type: ignore[type-arg]
                 auth: tuple[str, str] | None) -> None:
        self._inner = inner
        self._auth = auth

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._inner(request, timeout=timeout,
                           metadata=tuple(_outgoing(metadata, self._auth)),
                           credentials=credentials, wait_for_ready=wait_for_ready,
                           compression=compression)


class PeerChannel(grpc.aio.Channel):
    """``channel`` whose unary and server-streaming calls carry the bearer token and the
    current request id (unary calls also a CLIENT span when tracing is on), without grpc.aio's
    client interceptor machinery (an extra task and call object per call). Client-streaming
    calls, which no service makes, pass through unchanged."""

    def __init__(self, channel: grpc.aio.Channel, auth_token: str | None) -> None:
        self._channel = channel
        self._auth = ("authorization", f"Bearer {auth_token}") if auth_token else None

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        inner = self._channel.unary_unary(method, request_serializer, response_deserializer,
                                          _registered_method)
        return _PeerUnaryUnary(inner, method, self._auth)

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        inner = self._channel.unary_stream(method, request_serializer, response_deserializer,
                                           _registered_method)
        return _PeerUnaryStream(inner, self._auth)

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return self._channel.stream_unary(method, request_serializer, response_deserializer,
                                          _registered_method)

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return self._channel.stream_stream(method, request_serializer, response_deserializer,
                                           _registered_method)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc_val: BaseException | None, exc_tb: TracebackType | None) -> None:
        await self._channel.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()
