"""A user's messages and spend today (UTC) against the configured daily limits.

* ``COACH_USER_DAILY_BUDGET_USD``: when a user's recorded spend today reaches
  the budget, ``exceeded`` is ``DAILY_BUDGET_EXCEEDED`` with a sentence the app
  can show. Unset means unlimited; ``0`` stops every paid answer.
* ``COACH_USER_DAILY_MESSAGES`` is *enforced by the router* from the threads
  service's synchronous count. ``messages_today`` here is the ledger's own
  count, for display: the ledger learns of answers through the outbox relay,
  so it (and the spend) can lag by a few seconds, more while it was down.
  ``exceeded`` therefore names the budget only, so a caller can treat any
  non-empty value as "budget spent".
* Crisis messages are answered even over a limit. That is the router's rule
  (it never refuses a MESSAGE_TYPE_CRISIS message); it is recorded here so a
  reader of the limits finds it. Their cost still counts toward the spend.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from services.ledger.reports import Clock, utc_now

DAILY_BUDGET_EXCEEDED = "DAILY_BUDGET_EXCEEDED"

BUDGET_MESSAGE = "You've reached today's coaching budget. It resets at midnight UTC."


@dataclass(frozen=True)
class UserDay:
    messages: int
    spend_usd_nanos: int


@dataclass(frozen=True)
class LimitCheck:
    messages_today: int
    spend_today_usd_nanos: int
    exceeded: str  # "" within limits
    message: str


class UsageStore(Protocol):
    async def user_day(self, user_id: str, day: dt.date) -> UserDay: ...


class DailyLimits:
    def __init__(
        self,
        store: UsageStore,
        budget_usd_nanos: int | None,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._budget = budget_usd_nanos
        self._clock = clock

    async def check(self, user_id: str) -> LimitCheck:
        today = await self._store.user_day(user_id, self._clock().date())
        return judge(today, self._budget)


def judge(today: UserDay, budget_usd_nanos: int | None) -> LimitCheck:
    """Exceeded when today's spend has reached the budget (None: unlimited)."""
    if budget_usd_nanos is not None and today.spend_usd_nanos >= budget_usd_nanos:
        return LimitCheck(today.messages, today.spend_usd_nanos, DAILY_BUDGET_EXCEEDED,
                          BUDGET_MESSAGE)
    return LimitCheck(today.messages, today.spend_usd_nanos, "", "")
