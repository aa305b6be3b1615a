"""A background pass run again and again: the loop the threads service's outbox relay and
conversation retirer share.

``RepeatedPass(name, one_pass, settings)`` calls ``one_pass()`` (which returns how many
rows it handled) at once again while passes come back full (``batch_size``), else after
a ``notify()`` (then ``linger_s`` more, so what arrives meanwhile shares the pass) or
after ``interval_s``. While a pass fails it backs off exponentially from ``backoff_s`` up
to ``max_backoff_s``, with jitter, and logs each failure and the recovery. ``after_pass``
(optional) runs after every pass with the number of failures in a row (0: it worked).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassSettings:
    batch_size: int
    interval_s: float
    linger_s: float
    backoff_s: float
    max_backoff_s: float


class RepeatedPass:
    def __init__(
        self,
        name: str,
        one_pass: Callable[[], Awaitable[int]],
        settings: PassSettings,
        *,
        after_pass: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.one_pass = one_pass
        self.settings = settings
        self.after_pass = after_pass
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """Something to do: pass soon rather than at the next interval."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                done = await self.one_pass()
            except Exception as exc:  # noqa: BLE001 - the loop outlives any one failure
                failures += 1
                delay = min(self.settings.max_backoff_s,
                            self.settings.backoff_s * 2 ** min(failures, 16))
                delay *= random.uniform(0.5, 1.0)
                log.warning(f"{self.name} failed; its rows wait",
                            extra={"error": str(exc), "attempt": failures,
                                   "retry_in_ms": round(delay * 1000)})
                if self.after_pass is not None:
                    await self.after_pass(failures)
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info(f"{self.name} recovered", extra={"attempts": failures})
                failures = 0
            if self.after_pass is not None:
                await self.after_pass(0)
            if done >= self.settings.batch_size:
                continue  # more waiting: no pause
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.interval_s)
                if self.settings.linger_s > 0:
                    await asyncio.sleep(min(self.settings.linger_s, self.settings.interval_s))
