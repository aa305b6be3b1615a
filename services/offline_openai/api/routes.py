"""What every family of routes shares: the server's state, and the model's latency."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from ..clock import SimClock
from ..config import OfflineConfig
from ..errors import ApiError
from ..faults import Faults
from ..generation import OfflineModel
from ..stats import Stats
from ..store import StateStore


@dataclass
class ApiState:
    """One server's objects: settings, stored state, the model, faults, counters, clock."""

    config: OfflineConfig
    store: StateStore
    model: OfflineModel
    faults: Faults
    stats: Stats
    clock: SimClock
    # Set when the server stops: a hanging request gives up.
    closing: bool = False


class Routes:
    """A family of routes over the shared state; ``add_to`` registers its handlers."""

    def __init__(self, state: ApiState) -> None:
        self.state = state
        self.config = state.config
        self.store = state.store
        self.model = state.model
        self.faults = state.faults
        self.stats = state.stats
        self.clock = state.clock

    def add_to(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    async def _model_latency(self) -> None:
        """The configured upstream latency of one model call (--latency-ms)."""
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)

    def _flex_capacity(self, request: web.Request, service_tier: str | None) -> None:
        """Refuses a flex request while the flex-capacity fault is set, as OpenAI answers
        when flex processing has no capacity: 429 ``resource_unavailable``."""
        plan = self.faults.take_flex(request.path, service_tier)
        if plan is not None:
            self.stats.faults_injected += 1
            raise ApiError(
                429,
                "Resource unavailable: flex processing has no capacity right now; retry "
                "later or send the request with the default service tier. (injected fault)",
                type_="resource_unavailable",
                code="resource_unavailable",
                headers={"Retry-After": str(plan.retry_after_s)},
            )
