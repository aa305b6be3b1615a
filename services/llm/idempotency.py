"""Answers remembered by request id, so a retried write is not done twice.

The llm service keeps no database; this bounded in-memory cache covers the
common case (a caller's retry reaching the same process within minutes): the
retry gets the first answer, and a duplicate arriving while the first is still
running waits for it. Failures are not remembered, so a retry after an error
runs again. The threads service keeps the durable record.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class IdempotencyCache:
    def __init__(self, max_entries: int = 20_000, ttl_s: float = 600.0) -> None:
        self._done: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._running: dict[str, asyncio.Future[Any]] = {}
        self._max = max_entries
        self._ttl = ttl_s

    async def run(self, key: str | None, work: Callable[[], Awaitable[T]]) -> T:
        """``work()``'s result, or the result of an earlier call with the same key."""
        if not key:
            return await work()
        now = time.monotonic()
        hit = self._done.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            self._done.move_to_end(key)
            return hit[1]  # type: ignore[no-any-return]
        running = self._running.get(key)
        if running is not None:
            try:
                return await asyncio.shield(running)  # type: ignore[no-any-return]
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if running.cancelled() and task is not None and not task.cancelling():
                    return await self.run(key, work)  # the first caller went away: do it
                raise
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            result = await work()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: there may be no waiter
            raise
        else:
            self._done[key] = (time.monotonic(), result)
            while len(self._done) > self._max:
                self._done.popitem(last=False)
            future.set_result(result)
            return result
        finally:
            self._running.pop(key, None)
