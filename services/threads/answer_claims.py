"""Beginning an answer: one answer per request id across every router replica.

A router asks, before it decides anything, to begin answering (user, request id):

- answered already (on any replica, by any route): the stored answer comes back, and the
  router replays it; nothing is decided, called or charged again;
- nobody holds it: the caller claims it, with a lease (its deadline plus a margin), and
  answers; storing the answer (the router's journal, or the stateful turn) marks the
  claim answered in the same transaction;
- another caller holds it (a concurrent copy on another replica): we wait, polling, for
  its answer, until our own deadline (then UNAVAILABLE, REQUEST_IN_PROGRESS: retry with
  the same request id) or until its lease expires (its router died): then we take over.

Per-user order across routers: when other routers hold claims on this user's earlier
messages (answered, not stored yet: still in their journals), the claim waits for them to
be stored, so that the state returned (and the answer decided from it) follows them, and
the user's exchanges are stored in the order given. Normally that is one journal linger
(250 ms); when the other router died with answers in its journal, until it is back and
has stored them (or its claims expired). Should the caller's deadline come first, our
claim is given back and the caller gets UNAVAILABLE (USER_ANSWERS_PENDING: retry with the
same request id): an answer stored out of order would be seen out of order by the user's
conversation for good.

The store's message count comes back with every claim, so a router can tell its cached
state of the user from a stale one (another replica answered meanwhile), and so does the
user's owed upkeep (summaries, folds), reserved for this request id: the router reports it
in this answer's reply, and the exchange stored under the request id takes it, so the
ledger bills what the replies said.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from services.common.errors import Unavailable
from services.common.exchange import Exchange, UserState
from services.common.usage import Charge
from services.threads.history import History
from services.threads.repository import ClaimStore

log = logging.getLogger(__name__)

POLL_FIRST_S = 0.01
POLL_MAX_S = 0.2


@dataclass(frozen=True)
class BeginAnswer:
    user_id: str
    request_id: str
    holder: str
    token: str
    lease_s: float
    wait_s: float
    # > 0: the user's state comes back too (the router's cache missed).
    recent_turns: int = 0


@dataclass(frozen=True)
class Begun:
    """Either ``existing`` (answered already) or a claim held by the caller, with the
    user's stored message count and, when asked for, their state."""

    existing: Exchange | None
    message_count: int
    state: UserState | None = None
    # The user's owed upkeep, reserved for this request id: the answer's reply reports it.
    owed: tuple[Charge, ...] = ()


class AnswerClaims:
    def __init__(self, claims: ClaimStore, history: History) -> None:
        self.claims = claims
        self.history = history

    async def begin(self, request: BeginAnswer) -> Begun:
        started = time.monotonic()
        deadline = started + max(request.wait_s, 0.0)
        delay = POLL_FIRST_S
        while True:
            attempt = await self.claims.claim(request.user_id, request.request_id,
                                              request.holder, request.token, request.lease_s)
            if attempt.existing is not None:
                return Begun(attempt.existing, 0)
            now = time.monotonic()
            if attempt.claimed and not attempt.claimed_elsewhere:
                if request.recent_turns <= 0:
                    return Begun(None, attempt.message_count, owed=attempt.owed)
                state = await self.history.user_state(request.user_id, request.recent_turns, "")
                return Begun(None, state.message_count, state, attempt.owed)
            sleep = delay * random.uniform(0.5, 1.0)
            if now + sleep > deadline and attempt.claimed:
                await self.claims.abandon(request.request_id, request.token)
                raise Unavailable(
                    "this user's earlier answers, given by another router, are not stored yet; "
                    "retry with the same request id",
                    reason="USER_ANSWERS_PENDING", retry_after_s=1.0)
            if now + sleep > deadline:
                raise Unavailable(
                    "this request id is being answered elsewhere; retry with the same request id",
                    reason="REQUEST_IN_PROGRESS", retry_after_s=0.5)
            await asyncio.sleep(sleep)
            delay = min(delay * 2, POLL_MAX_S)

    async def abandon(self, request_id: str, token: str) -> None:
        await self.claims.abandon(request_id, token)

    async def abandon_stale(self, holder: str, current_token_prefix: str) -> int:
        return await self.claims.abandon_stale(holder, current_token_prefix)

    async def sweep_forever(self, older_than_s: float, every_s: float) -> None:
        """Deletes old claims (answered or expired long ago) for as long as it runs."""
        while True:
            await asyncio.sleep(every_s * random.uniform(0.8, 1.2))
            try:
                while await self.claims.sweep(older_than_s) > 0:
                    await asyncio.sleep(0)
            except Exception as exc:  # noqa: BLE001 - the database may be restarting: next round
                log.warning("sweeping old answer claims failed", extra={"error": repr(exc)})
