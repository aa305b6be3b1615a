"""Answers remembered by request id, so a retried write is not done twice.

The llm service keeps no database; this bounded in-memory cache covers the
common case (a caller's retry reaching the same process within minutes): the
retry gets the first answer, and a duplicate arriving while the first is still
running waits for it. Failures are not remembered, so a retry after an error
runs again. The threads service keeps the durable record.

Keyed work is not cancelled with its caller. A caller that goes away (it was
cancelled, or its process died) leaves the work running to its own deadline,
and what it returns is remembered: the upstream call was made and paid for,
so the retry gets that answer rather than a second call (for a stateful turn,
rather than the same message appended to the conversation twice).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class IdempotencyCache:
    def __init__(self, max_entries: int = 20_000, ttl_s: float = 600.0) -> None:
        self._done: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._max = max_entries
        self._ttl = ttl_s

    async def run(self, key: str | None, work: Callable[[], Awaitable[T]]) -> T:
        """``work()``'s result, or the result of an earlier call with the same key."""
        if not key:
            return await work()
        hit = self._done.get(key)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            self._done.move_to_end(key)
            return hit[1]  # type: ignore[no-any-return]
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._running[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        return await asyncio.shield(task)  # type: ignore[no-any-return]

    @property
    def running(self) -> int:
        """Keyed calls still running (some may have lost their caller)."""
        return len(self._running)

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if task.cancelled() or task.exception() is not None:
            return  # not remembered: a retry runs again (exception() marks it retrieved)
        self._done[key] = (time.monotonic(), task.result())
        self._done.move_to_end(key)
        while len(self._done) > self._max:
            self._done.popitem(last=False)
