"""Work that must not be cancelled with its caller: an upstream answer asked for is paid for.

``Unattended.run(work)`` awaits ``work`` for the caller, in a task shielded from the
caller's cancellation: if the caller goes away (its deadline, its own caller, a peer
restarting), the work still runs to its own end (bounded by its own deadlines) and
stores what it got, so a retry finds it. How such work ended is logged, since nobody
else sees it. ``finish`` waits for what is still running, at shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Unattended:
    def __init__(self, what: str) -> None:
        self.what = what  # "turn", "answer": for the log lines
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, work: Coroutine[Any, Any, T], **log_extra: Any) -> T:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                log.info(f"caller went away: the {self.what} goes on", extra=log_extra)
                task.add_done_callback(functools.partial(self._ended, log_extra))
            raise

    async def finish(self, timeout_s: float) -> None:
        """Waits (at most ``timeout_s``) for the work still running."""
        if self._tasks:
            log.info(f"waiting for {self.what}s still running", extra={"count": len(self._tasks)})
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    def _ended(self, log_extra: dict[str, Any], task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            log.warning(f"{self.what} without a caller cancelled", extra=log_extra)
        elif (error := task.exception()) is not None:
            log.warning(f"{self.what} without a caller failed",
                        extra={**log_extra, "error": repr(error)})
        else:
            log.info(f"{self.what} without a caller done", extra=log_extra)
