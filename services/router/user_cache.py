"""The router's cache of user state, kept exact by the threads service's change stream.

Deciding needs a user's message count, recent turns, messages today, last
canned reply, and whether this request id was already answered. Reading them
from threads costs every message a synchronous hop; this cache keeps them in
the router instead, updated with each answer the router gives.

It is trusted only while it can be exact: the cache follows threads'
WatchUserChanges stream, drops a user whenever another writer (another router
replica, say) stores an exchange for them, and is emptied and switched off
whenever the stream is not live (threads restarting, the database restarting,
the router falling behind). Switched off, every lookup reads threads, as
before. A fetch that raced a change is not cached.

Bounded: least recently used users are dropped past ``max_users``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from services.common.errors import CoachError
from services.common.exchange import Exchange, UserState
from services.common.metrics import USER_CACHE
from services.common.vocabulary import COACH, USER, Route, Turn

log = logging.getLogger(__name__)

# Looked up once: every message counts one of them.
_OFF, _MISS, _HIT = (USER_CACHE.labels(outcome) for outcome in ("off", "miss", "hit"))


def _utc_today() -> date:
    return datetime.now(UTC).date()


@dataclass
class _User:
    message_count: int
    recent: deque[Turn]
    messages_today: int
    day: date
    last_canned_reply: str
    answered: OrderedDict[str, Exchange] = field(default_factory=OrderedDict)


class UserStateCache:
    def __init__(
        self,
        *,
        max_users: int,
        recent_turns: int,
        remember_answers: int = 16,
        today: Callable[[], date] = _utc_today,
    ) -> None:
        self.max_users = max_users
        self.recent_turns = recent_turns
        self.remember_answers = remember_answers
        self._today = today
        self._users: OrderedDict[str, _User] = OrderedDict()
        self._live = False
        # Bumped by every invalidation: a fetch that started before one is not cached.
        self._epoch = 0

    @property
    def live(self) -> bool:
        return self._live

    def __len__(self) -> int:
        return len(self._users)

    # -- lookups --------------------------------------------------------------------------

    def get(self, user_id: str, request_id: str) -> UserState | None:
        if not self._live:
            _OFF.inc()
            return None
        user = self._users.get(user_id)
        if user is None:
            _MISS.inc()
            return None
        _HIT.inc()
        self._users.move_to_end(user_id)
        today = self._today()
        return UserState(
            message_count=user.message_count,
            recent_turns=tuple(user.recent),
            existing=user.answered.get(request_id),
            messages_today=user.messages_today if user.day == today else 0,
            last_canned_reply=user.last_canned_reply,
        )

    def epoch(self) -> int:
        """Taken before a fetch from threads; hand it back to :meth:`put`."""
        return self._epoch

    def put(self, user_id: str, state: UserState, epoch: int) -> None:
        """Caches state read from threads, unless something changed since ``epoch``."""
        if not self._live or epoch != self._epoch:
            return
        recent: deque[Turn] = deque(state.recent_turns, maxlen=self.recent_turns)
        user = _User(state.message_count, recent, state.messages_today, self._today(),
                     state.last_canned_reply)
        if state.existing is not None:
            user.answered[state.existing.request_id] = state.existing
        self._users[user_id] = user
        self._users.move_to_end(user_id)
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)

    def record(self, answer: Exchange) -> None:
        """The router answered (and journaled or stored) this: the cached state follows."""
        user = self._users.get(answer.user_id)
        if user is None or answer.request_id in user.answered:
            return
        today = self._today()
        user.messages_today = (user.messages_today if user.day == today else 0) + 1
        user.day = today
        user.message_count += 1
        user.recent.append(Turn(USER, answer.user_text))
        coach_text = answer.coach_turn
        if coach_text.strip():
            user.recent.append(Turn(COACH, coach_text))
        if answer.route is Route.PATTERN:
            user.last_canned_reply = coach_text
        user.answered[answer.request_id] = answer
        while len(user.answered) > self.remember_answers:
            user.answered.popitem(last=False)

    # -- invalidation ---------------------------------------------------------------------

    def drop(self, user_id: str) -> None:
        self._epoch += 1
        self._users.pop(user_id, None)

    def go_live(self) -> None:
        self._epoch += 1
        self._users.clear()
        self._live = True

    def go_dark(self) -> None:
        self._epoch += 1
        self._users.clear()
        self._live = False


@dataclass(frozen=True)
class Change:
    """One message of the change stream: ``user_id`` empty means "the stream is live"."""

    user_id: str
    origin: str


ChangeStream = Callable[[], AsyncIterator[Change]]


async def follow_changes(
    cache: UserStateCache, stream: ChangeStream, origin: str, *, retry_max_s: float = 5.0
) -> None:
    """Keeps the cache exact for as long as it runs (cancel it to stop)."""
    delay = 0.2
    while True:
        try:
            async for change in stream():
                if not change.user_id:
                    cache.go_live()
                    delay = 0.2
                    log.info("user cache live")
                elif change.origin != origin:
                    cache.drop(change.user_id)
            reason = "the stream ended"
        except CoachError as err:
            reason = err.message
        if cache.live:
            log.warning("user cache off until the change stream is back", extra={"reason": reason})
        cache.go_dark()
        await asyncio.sleep(delay)
        delay = min(delay * 2, retry_max_s)
