"""Readiness checks: grpc.health.v1 for the services, a TCP connect for the rest.

``python -m services.suite healthcheck ADDR`` (Docker healthchecks) and
``python -m services.suite wait ADDR...`` (scripts) use these too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import TlsSettings

SERVING = "SERVING"


def _channel(address: str, tls: TlsSettings | None) -> grpc.aio.Channel:
    if tls is not None and (tls.ca_file or tls.enabled):
        creds = grpc.ssl_channel_credentials(
            root_certificates=tls.read(tls.ca_file),
            private_key=tls.read(tls.key_file) if tls.require_client_cert else None,
            certificate_chain=tls.read(tls.cert_file) if tls.require_client_cert else None,
        )
        return grpc.aio.secure_channel(address, creds)
    return grpc.aio.insecure_channel(address)


async def health_status(
    address: str, *, service: str = "", timeout: float = 2.0, tls: TlsSettings | None = None
) -> str:
    """The health status name of ``service`` at ``address`` (``SERVING``, ``NOT_SERVING``, ...),
    or ``UNREACHABLE: <why>`` when there is no answer."""
    async with _channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            return f"UNREACHABLE: {err.code().name} {err.details() or ''}".strip()
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def wait_serving(
    address: str,
    *,
    timeout: float,
    tls: TlsSettings | None = None,
    gave_up: Callable[[], str | None] = lambda: None,
    interval: float = 0.1,
) -> str:
    """Polls until ``address`` reports SERVING; returns the last status seen.

    ``gave_up()`` returning a reason (e.g. "exit code 1": the process died)
    ends the wait early with that reason.
    """
    deadline = time.monotonic() + timeout
    status = "UNREACHABLE"
    while True:
        reason = gave_up()
        if reason:
            return reason
        status = await health_status(address, timeout=min(2.0, timeout), tls=tls)
        if status == SERVING or time.monotonic() >= deadline:
            return status
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, 0.5)


async def wait_tcp(
    host: str,
    port: int,
    *,
    timeout: float,
    gave_up: Callable[[], str | None] = lambda: None,
) -> str | None:
    """Waits until something accepts connections on host:port; None when it does, else why not."""
    deadline = time.monotonic() + timeout
    while True:
        reason = gave_up()
        if reason:
            return reason
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, TimeoutError) as exc:
            if time.monotonic() >= deadline:
                return f"nothing listening on {host}:{port} ({exc})"
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return None
