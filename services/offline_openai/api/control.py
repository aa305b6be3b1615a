"""The model list (``/v1/models``) and the control routes tests and benchmarks drive
(``/_control/...``: faults, stats, the simulated clock, reset, health)."""

from __future__ import annotations

import logging
import math
from typing import Any

from aiohttp import web

from ..errors import bad_request
from ..faults import FaultPlan
from .http import read_body, respond
from .routes import Routes

log = logging.getLogger("services.offline_openai")

KNOWN_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o4-mini",
)


class ModelRoutes(Routes):
    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/models", self.list_models)
        router.add_get("/v1/models/{model_id}", self.get_model)

    async def list_models(self, request: web.Request) -> web.Response:
        data = [self._model_json(name) for name in KNOWN_MODELS]
        return respond({"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.Response:
        return respond(self._model_json(request.match_info["model_id"]))

    @staticmethod
    def _model_json(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "offline"}


class ControlRoutes(Routes):
    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/_control/faults", self.set_faults)
        router.add_get("/_control/faults", self.get_faults)
        router.add_get("/_control/stats", self.get_stats)
        router.add_post("/_control/reset", self.reset)
        router.add_post("/_control/clock", self.set_clock)
        router.add_get("/_control/clock", self.get_clock)
        router.add_get("/_control/health", self.health)


    async def set_faults(self, request: web.Request) -> web.Response:
        plan = FaultPlan.from_json(await read_body(request))
        self.faults.apply(plan)
        log.info("faults set", extra={"event": "faults_set", "fault": plan.to_json()})
        return respond(plan.to_json())

    async def get_faults(self, request: web.Request) -> web.Response:
        return respond(self.faults.plan.to_json())

    async def get_stats(self, request: web.Request) -> web.Response:
        return respond(self.stats.snapshot())

    def _clock_json(self) -> dict[str, Any]:
        return {**self.clock.to_json(), "cache_ttl_seconds": self.model.cache.ttl_seconds}

    async def set_clock(self, request: web.Request) -> web.Response:
        """`{"now": <epoch seconds>}`: simulated time from now on; `{"now": null}`: real time."""
        body = await read_body(request)
        if "now" not in body:
            raise bad_request("'now' is required (epoch seconds, or null for real time)", "now")
        value = body["now"]
        if value is None:
            self.clock.use_real_time()
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.clock.set(float(value))
        else:
            raise bad_request("'now' must be a number of seconds or null", "now")
        return respond(self._clock_json())

    async def get_clock(self, request: web.Request) -> web.Response:
        return respond(self._clock_json())

    async def reset(self, request: web.Request) -> web.Response:
        """Clear faults, stats, the prompt cache and every stored object; back to real time."""
        self.clock.use_real_time()
        self.faults.clear()
        self.stats.reset()
        self.model.cache.clear()
        self.store.clear()
        return respond({"reset": True})

    async def health(self, request: web.Request) -> web.Response:
        return respond({"status": "ok"})
