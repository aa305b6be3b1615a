"""One gRPC server bootstrap for every service.

``CoachServer`` wires the standard health service, server reflection, our
interceptors, optional TLS / mutual TLS, and a graceful shutdown: health goes
NOT_SERVING, new calls are refused, in-flight calls finish (up to the grace
period), then the service's own clean-up runs (pools closed, queues flushed).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common.errors import ConfigError
from services.common.interceptors import ServerInterceptor
from services.common.logs import setup_logging
from services.common.metrics import serve_metrics
from services.common.settings import ServerSettings, TlsSettings
from services.common.supervision import follow_supervisor
from services.common.tracing import setup_tracing

log = logging.getLogger("coach.server")


@dataclass(frozen=True)
class Registration:
    """A servicer and how to add it: ``add(servicer, server)`` and its full name."""

    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    full_name: str


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    if not tls.enabled:
        return None
    key, cert = tls.read(tls.key_file), tls.read(tls.cert_file)
    assert key is not None and cert is not None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=tls.read(tls.ca_file),
        require_client_auth=tls.require_client_cert,
    )


class CoachServer:
    def __init__(
        self,
        settings: ServerSettings,
        registrations: Sequence[Registration],
        *,
        on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
        on_drain: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.settings = settings
        self.health = HealthServicer()
        self._on_stop = list(on_stop)
        # Run as the drain begins: ends long-lived streams, which would otherwise hold it.
        self._on_drain = list(on_drain)
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # Clients re-resolve DNS when a connection ages out, so new replicas
            # behind a headless service get traffic.
            ("grpc.max_connection_age_ms", 300_000),
            ("grpc.max_connection_age_grace_ms", 30_000),
        ]
        self.server = grpc.aio.server(
            interceptors=[ServerInterceptor(settings.auth_token, settings.service)], options=options
        )
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        for reg in registrations:
            reg.add(reg.servicer, self.server)
            names.append(reg.full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(names, self.server)
        self._full_names = [reg.full_name for reg in registrations]
        self.port = 0
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        """Binds and starts; returns the port (useful with ``:0`` in tests)."""
        creds = server_credentials(self.settings.tls)
        if creds is None:
            self.port = self.server.add_insecure_port(self.settings.listen)
        else:
            self.port = self.server.add_secure_port(self.settings.listen, creds)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        await self.server.start()
        for name in ["", *self._full_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"listen": self.settings.listen, "port": self.port,
                                   "tls": self.settings.tls.enabled})
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, finish in-flight ones, clean up."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.health.enter_graceful_shutdown()
        grace = self.settings.grace_seconds if grace is None else grace
        log.info("stopping", extra={"grace_s": grace})
        stopping = asyncio.ensure_future(self.server.stop(grace))
        # Every hook is bounded: a stop that waits forever on one (a peer that never answers,
        # a stream that never ends) would be killed by the orchestrator anyway, with nothing
        # said; here the overrun is logged by name and the stop goes on.
        budget = grace + HOOK_MARGIN_S
        for hook in self._on_drain:
            await _bounded(hook, budget, "drain")
        await stopping
        for hook in self._on_stop:
            await _bounded(hook, budget, "clean-up")
        log.info("stopped")

    async def serve_until_signal(self) -> None:
        """Runs until SIGTERM or SIGINT, then stops gracefully."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await stop_requested.wait()
        await self.stop()


# How long a stop hook may run past the grace period before the stop gives up on it.
HOOK_MARGIN_S = 10.0


async def _bounded(hook: Callable[[], Awaitable[None]], budget: float, kind: str) -> None:
    try:
        await asyncio.wait_for(hook(), budget)
    except TimeoutError:
        log.error(f"{kind} hook did not finish in {budget:g} s; stopping without it",
                  extra={"hook": getattr(hook, "__qualname__", repr(hook))})
    except Exception:
        log.exception(f"{kind} hook failed")


class HasServerSettings(Protocol):
    @property
    def server(self) -> ServerSettings: ...


SettingsT = TypeVar("SettingsT", bound=HasServerSettings)


def freeze_startup_heap() -> None:
    """Keeps what start-up built (modules, the SDKs' and protobuf's classes, data files,
    pools) out of every later garbage collection: collected once, then frozen.

    A full collection walks every tracked object, start-up's too (in the llm service, many
    more than serving makes), stalling every call in flight while it runs
    (docs/decisions.md). Frozen, later collections walk only what serving
    created. What start-up leaves behind as garbage is collected just before."""
    gc.collect()
    gc.freeze()


def run_service(
    service: str,
    load_settings: Callable[[], SettingsT],
    create_server: Callable[[SettingsT], Awaitable[CoachServer]],
) -> None:
    """The whole ``__main__`` of a service: settings, logs, metrics, serve until a signal.

    A bad setting or data file ends the process with status 2 and one clear log line.
    """
    follow_supervisor()
    setup_logging(service)
    try:
        settings = load_settings()
    except ConfigError as err:
        log.error("invalid configuration", extra={"error": str(err)})
        sys.exit(2)
    setup_logging(service, settings.server.log_level)
    setup_tracing(service)

    async def main() -> None:
        serve_metrics(settings.server.metrics_port, settings.server.metrics_host)
        try:
            server = await create_server(settings)
        except ConfigError as err:
            log.error("invalid configuration", extra={"error": str(err)})
            sys.exit(2)
        await server.start()
        freeze_startup_heap()
        await server.serve_until_signal()

    try:
        run_loop(main(), settings.server.event_loop)
    except KeyboardInterrupt:  # pragma: no cover - handled by the signal handler
        pass


def run_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Runs ``main`` on uvloop (``COACH_EVENT_LOOP=uvloop``, the default) or asyncio's own
    loop. uvloop's loop (libuv, in C) makes a cheap-tier reply measurably faster
    (docs/decisions.md): the router and llm services turn their loop several times per
    message. Without uvloop installed (it is not made for
    every platform) the service says so and runs on asyncio's loop."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed: running on asyncio's event loop")
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
