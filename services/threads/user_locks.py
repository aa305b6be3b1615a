"""In-process, per-user asyncio locks that disappear when nobody holds or awaits them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class UserLocks:
    """``async with locks.hold(user_id)``: one holder per user in this process.

    The dict only holds users with a turn running or waiting, so it stays as
    small as the number of concurrent users.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, user_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(user_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[user_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[user_id]
            if users <= 1:
                del self._locks[user_id]
            else:
                self._locks[user_id] = (lock, users - 1)
