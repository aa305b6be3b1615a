"""Which users' stored state changed: PostgreSQL NOTIFY fanned out to watchers.

Every stored exchange sends ``NOTIFY coach_user_changes`` in its transaction
(delivered at commit, so a watcher never hears of a change before it can be
read). Each threads replica LISTENs on one connection of its own and hands
every change to its WatchUserChanges streams; routers drop the user's cached
state unless they wrote the change themselves.

A watcher must never miss a change silently, so whenever that cannot be
promised the streams end and the routers start over with an empty cache:
the LISTEN connection is lost (database restarting), a watcher falls too far
behind (its queue is full), or the service is stopping. No new stream is
accepted until LISTEN is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from services.common.errors import Unavailable
from services.threads.repository import USER_CHANGES_CHANNEL

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


@dataclass(frozen=True)
class UserChange:
    user_id: str
    origin: str


class _Ended:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class Watcher:
    """One stream's view: the changes since it subscribed, in commit order."""

    def __init__(self, queue_size: int, origin: str = "") -> None:
        self._queue: asyncio.Queue[UserChange | _Ended] = asyncio.Queue(queue_size)
        self._ended = False
        # The watcher's own writes are not news to it.
        self._origin = origin

    def offer(self, change: UserChange) -> bool:
        """False when the watcher is too far behind (it is then ended)."""
        if self._ended:
            return False
        if self._origin and change.origin == self._origin:
            return True
        try:
            self._queue.put_nowait(change)
            return True
        except asyncio.QueueFull:
            self.end("the watcher fell behind")
            return False

    def end(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        with contextlib.suppress(asyncio.QueueEmpty):
            while self._queue.full():  # make room for the end marker: the watcher restarts anyway
                self._queue.get_nowait()
        self._queue.put_nowait(_Ended(reason))

    def __aiter__(self) -> AsyncIterator[UserChange]:
        return self._changes()

    async def _changes(self) -> AsyncIterator[UserChange]:
        while True:
            item = await self._queue.get()
            if isinstance(item, _Ended):
                raise Unavailable(f"user changes stream ended: {item.reason}; watch again",
                                  reason="WATCH_ENDED", retry_after_s=1.0)
            yield item


class UserChanges:
    def __init__(
        self,
        connect: Connect,
        *,
        queue_size: int = 10_000,
        health_check_s: float = 5.0,
        reconnect_s: float = 1.0,
    ) -> None:
        self._connect = connect
        self._queue_size = queue_size
        self._health_check_s = health_check_s
        self._reconnect_s = reconnect_s
        self._watchers: set[Watcher] = set()
        self._live = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return self._live.is_set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="user-changes")

    async def wait_live(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._live.wait(), timeout)
        return self.live

    async def stop(self) -> None:
        """Ends every stream (the service is stopping) and the LISTEN connection."""
        self._stopping.set()
        self._end_all("the threads service is stopping")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.asynccontextmanager
    async def watch(self, origin: str = "") -> AsyncIterator[Watcher]:
        """Changes from now on, but those written by ``origin`` (the watcher itself)."""
        if not self.live:
            raise Unavailable("user changes are not being listened to right now; watch again",
                              reason="WATCH_UNAVAILABLE", retry_after_s=1.0)
        watcher = Watcher(self._queue_size, origin)
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)

    # -- LISTEN ------------------------------------------------------------------------------

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            data = json.loads(payload)
            change = UserChange(str(data["u"]), str(data.get("o", "")))
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable user change notification", extra={"payload": payload[:200]})
            return
        for watcher in list(self._watchers):
            if not watcher.offer(change):
                self._watchers.discard(watcher)
                log.warning("a user changes watcher fell behind: its stream ends")

    def _end_all(self, reason: str) -> None:
        self._live.clear()
        for watcher in list(self._watchers):
            watcher.end(reason)
        self._watchers.clear()

    async def _listen_forever(self) -> None:
        while not self._stopping.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(USER_CHANGES_CHANNEL, self._on_notify)
                self._live.set()
                log.info("listening for user changes")
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self._health_check_s)
                        break
                    await conn.fetchval("SELECT 1", timeout=self._health_check_s)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    asyncpg.InternalClientError, TimeoutError) as exc:
                # database down or restarting: streams end, retry
                log.warning("user changes listener lost", extra={"error": repr(exc)})
            finally:
                self._end_all("the database connection was lost")
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1.0)
            await asyncio.sleep(self._reconnect_s)
