"""Faults injected into answers, for tests and benchmarks.

One plan is active at a time: a mode, an optional count of requests it affects
(then it clears itself), and an optional path prefix it applies to.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import ApiError


def _non_negative_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(400, f"{name} must be a non-negative integer", param=name)
    return value


class FaultMode(str, enum.Enum):
    NONE = "none"
    ERROR_500 = "error_500"
    ERROR_429 = "error_429"
    LATENCY = "latency"
    HANG = "hang"
    # Only requests sent with service_tier "flex" are refused (429 resource_unavailable),
    # as OpenAI does when flex capacity runs out; every other request is served.
    FLEX_UNAVAILABLE = "flex_unavailable"


@dataclass(frozen=True, slots=True)
class FaultPlan:
    mode: FaultMode = FaultMode.NONE
    count: int | None = None  # requests still affected; None = until cleared
    path_prefix: str = ""  # e.g. "/v1/responses"; empty = every /v1 path
    retry_after_s: int = 1  # error_429: the Retry-After header
    latency_ms: int = 0  # latency: extra delay per affected request

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mode"] = self.mode.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultPlan:
        """Parse {"mode", "count", "path_prefix", "retry_after", "latency_ms"}."""
        if not isinstance(data, dict):
            raise ApiError(400, "fault plan must be a JSON object")
        try:
            mode = FaultMode(str(data.get("mode", "none")))
        except ValueError:
            modes = ", ".join(m.value for m in FaultMode)
            raise ApiError(400, f"unknown fault mode; use one of: {modes}", param="mode") from None
        count = data.get("count")
        retry_after = _non_negative_int(data.get("retry_after", data.get("retry_after_s", 1)),
                                        "retry_after")
        latency_ms = _non_negative_int(data.get("latency_ms", 0), "latency_ms")
        path_prefix = data.get("path_prefix", data.get("path", "")) or ""
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
            raise ApiError(400, "count must be a positive integer or null", param="count")
        if not isinstance(path_prefix, str):
            raise ApiError(400, "path_prefix must be a string", param="path_prefix")
        return cls(mode, count, path_prefix, retry_after, latency_ms)


class Faults:
    """The active fault plan; settable in-process or over HTTP (/_control/faults)."""

    def __init__(self) -> None:
        self._plan = FaultPlan()
        self._changed = asyncio.Event()
        self._generation = 0
        self.injected = 0

    @property
    def plan(self) -> FaultPlan:
        return self._plan

    def set(
        self,
        mode: FaultMode | str = FaultMode.NONE,
        *,
        count: int | None = None,
        path_prefix: str = "",
        retry_after_s: int = 1,
        latency_ms: int = 0,
    ) -> FaultPlan:
        plan = FaultPlan.from_json(
            {
                "mode": FaultMode(mode).value,
                "count": count,
                "path_prefix": path_prefix,
                "retry_after": retry_after_s,
                "latency_ms": latency_ms,
            }
        )
        self.apply(plan)
        return plan

    def apply(self, plan: FaultPlan) -> None:
        self._plan = plan
        self._generation += 1
        # Wake every hanging request: an explicit set or clear releases it.
        self._changed.set()
        self._changed = asyncio.Event()

    def clear(self) -> None:
        self.apply(FaultPlan())

    def take(self, path: str) -> FaultPlan | None:
        """The fault for this request, if any; consumes one from a counted plan. A
        flex-only plan is not taken here but by the handler that reads the service tier
        (:meth:`take_flex`)."""
        plan = self._plan
        if plan.mode in (FaultMode.NONE, FaultMode.FLEX_UNAVAILABLE) \
                or not path.startswith(plan.path_prefix):
            return None
        return self._consume(plan)

    def take_flex(self, path: str, service_tier: str | None) -> FaultPlan | None:
        """The flex-capacity fault for a request sent with this service tier, if any."""
        plan = self._plan
        if plan.mode is not FaultMode.FLEX_UNAVAILABLE or service_tier != "flex" \
                or not path.startswith(plan.path_prefix):
            return None
        return self._consume(plan)

    def _consume(self, plan: FaultPlan) -> FaultPlan:
        if plan.count is not None:
            remaining = plan.count - 1
            self._plan = replace(plan, count=remaining) if remaining > 0 else FaultPlan()
        self.injected += 1
        return plan

    @property
    def generation(self) -> int:
        """Bumped by every explicit set/clear (not by a counted plan running out)."""
        return self._generation

    async def wait_for_change(self, generation: int, timeout: float) -> bool:
        """Wait up to timeout seconds for a set/clear after `generation`; True if one came."""
        if self._generation != generation:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass
        return self._generation != generation
