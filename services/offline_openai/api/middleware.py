"""The one middleware every request passes: counts it, injects the planned fault, checks
the Assistants beta header, turns errors into OpenAI's error JSON, logs one line."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import ApiError
from ..faults import FaultMode, FaultPlan
from ..store import new_id
from .http import MODEL_CALL_KEY, respond
from .routes import ApiState

log = logging.getLogger("services.offline_openai")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ASSISTANTS_PREFIXES = ("/v1/assistants", "/v1/threads")
HANG_POLL_SECONDS = 0.2


class RequestMiddleware:
    def __init__(self, state: ApiState) -> None:
        self.state = state
        self.faults = state.faults
        self.stats = state.stats

    @web.middleware
    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = new_id("req")
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        endpoint = f"{request.method} {route}"
        counted = not request.path.startswith("/_control/")
        if counted:
            self.stats.requests[endpoint] += 1
        fault: FaultPlan | None = None
        try:
            if request.path.startswith("/v1/"):
                fault = self.faults.take(request.path)
                if fault is not None:
                    await self._apply_fault(request, fault)
                if request.path.startswith(ASSISTANTS_PREFIXES):
                    beta = request.headers.get("OpenAI-Beta", "")
                    if "assistants=v2" not in beta:
                        raise ApiError(
                            400,
                            "You must provide the 'OpenAI-Beta' header to access the Assistants "
                            "API. Please try again by setting the header "
                            "'OpenAI-Beta: assistants=v2'.",
                            code="invalid_beta",
                        )
            response = await handler(request)
        except ApiError as err:
            response = respond(err.body(), err.status, err.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = "not_found" if exc.status == 404 else None
            http_error = ApiError(
                exc.status, f"{exc.reason}: {request.method} {request.path}", code=code
            )
            response = respond(http_error.body(), http_error.status)
        if counted:
            self.stats.statuses[response.status] += 1
        if fault is not None:
            self.stats.faults_injected += 1
        response.headers["x-request-id"] = request_id
        elapsed = time.perf_counter() - started
        if counted:
            self.stats.handling_s[endpoint] += elapsed
        fields: dict[str, Any] = {
            "event": "request",
            "request_id": request_id,
            "route": endpoint,
            "status": response.status,
            "latency_ms": round(elapsed * 1000, 2),
        }
        if fault is not None:
            fields["fault"] = fault.mode.value
        fields.update(request.get(MODEL_CALL_KEY, {}))
        # A stand-in for the upstream: one line per request only when asked (LOG_LEVEL=DEBUG),
        # or when a fault was injected; it should cost as little as a real upstream does here.
        log.log(logging.INFO if fault is not None else logging.DEBUG, "request", extra=fields)
        return response

    async def _apply_fault(self, request: web.Request, plan: FaultPlan) -> None:
        if plan.mode is FaultMode.ERROR_500:
            raise ApiError(
                500,
                "The server had an error while processing your request. (injected fault)",
                type_="server_error",
            )
        if plan.mode is FaultMode.ERROR_429:
            raise ApiError(
                429,
                "Rate limit reached. Please try again later. (injected fault)",
                type_="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(plan.retry_after_s)},
            )
        if plan.mode is FaultMode.LATENCY:
            await asyncio.sleep(plan.latency_ms / 1000)
        elif plan.mode is FaultMode.HANG:
            await self._hang(request)

    async def _hang(self, request: web.Request) -> None:
        """Answer nothing until the fault is set/cleared again or the client goes away."""
        generation = self.faults.generation
        while not self.state.closing:
            if await self.faults.wait_for_change(generation, HANG_POLL_SECONDS):
                return
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ApiError(499, "client closed the connection while the server hung")

