"""The server's clock: real monotonic time, or simulated time a benchmark sets.

Only the prompt cache reads it (to expire prefixes after a TTL of inactivity). A
benchmark that replays weeks of traffic in minutes sets the simulated time with
``POST /_control/clock {"now": <epoch seconds>}`` (or ``server.clock.set(...)``) before
each window of simulated time; ``{"now": null}`` goes back to real time.
"""

from __future__ import annotations

import time
from typing import Any


class SimClock:
    """Seconds, from ``time.monotonic()`` until ``set()`` switches to simulated time."""

    def __init__(self) -> None:
        self._simulated: float | None = None
        self.base = 0  # changes whenever the time base does (real <-> simulated)

    @property
    def simulated(self) -> bool:
        return self._simulated is not None

    def now(self) -> float:
        return time.monotonic() if self._simulated is None else self._simulated

    def set(self, now: float) -> None:
        """Simulated time from now on, at ``now`` (epoch seconds; may go back)."""
        if self._simulated is None:
            self.base += 1
        self._simulated = float(now)

    def advance(self, seconds: float) -> None:
        self.set(self.now() + seconds)

    def use_real_time(self) -> None:
        if self._simulated is not None:
            self.base += 1
        self._simulated = None

    def to_json(self) -> dict[str, Any]:
        return {"now": self.now(), "simulated": self.simulated}
