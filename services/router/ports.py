"""The router's ports: what answering a message needs of its peers (threads, llm, ledger)
and of its own cache and journal, as small protocols and the values they carry. ``peers.py``
implements the peers over gRPC, ``user_cache.py`` and ``journal.py`` the rest; tests fake
them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.common.exchange import Exchange, UserState
from services.common.usage import Charge, Usage
from services.common.vocabulary import Turn
from services.router.decision import Decision

__all__ = ["AnswerClaim", "AnswerStore", "BegunAnswer", "Completion", "CompletionInput",
           "LedgerPort", "LlmPort", "StateCache", "StatefulTurnInput", "ThreadsPort",
           "UserContextIn"]


@dataclass(frozen=True)
class UserContextIn:
    display_name: str = ""
    current_streak: int = 0
    local_hour: int | None = None
    timezone: str = ""



@dataclass(frozen=True)
class StatefulTurnInput:
    request_id: str
    user_id: str
    message: str
    decision: Decision
    context: UserContextIn
    baseline: bool


@dataclass(frozen=True)
class CompletionInput:
    request_id: str
    user_id: str
    message: str
    history: tuple[Turn, ...]
    decision: Decision
    context: UserContextIn


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    usage: Usage



@dataclass(frozen=True)
class AnswerClaim:
    """This router's claim on a request id (threads' BeginAnswer): held until the answer is
    stored, abandoned if the message is refused, expired after ``lease_s`` otherwise."""

    user_id: str
    request_id: str
    token: str
    lease_s: float
    # How long to wait for another replica's answer to the same request id.
    wait_s: float


@dataclass(frozen=True)
class BegunAnswer:
    """The stored answer (``existing``), or the claim held, with the store's message count
    of the user and, when asked for, their state."""

    existing: Exchange | None
    message_count: int
    state: UserState | None = None
    # The user's owed upkeep, reserved for this request id: this answer's reply reports it.
    owed: tuple[Charge, ...] = ()


class ThreadsPort(Protocol):
    async def user_state(self, user_id: str, request_id: str, recent: int, timeout: float) -> UserState: ...
    async def begin_answer(self, claim: AnswerClaim, recent: int, timeout: float) -> BegunAnswer: ...
    async def abandon_answer(self, claim: AnswerClaim, timeout: float) -> None: ...
    async def stateful_turn(self, turn: StatefulTurnInput, timeout: float) -> Exchange: ...


class StateCache(Protocol):
    """The router's cache of user state (user_cache.UserStateCache)."""

    def get(self, user_id: str, request_id: str) -> UserState | None: ...
    def epoch(self) -> int: ...
    def put(self, user_id: str, state: UserState, epoch: int) -> None: ...
    def record(self, answer: Exchange) -> None: ...
    def drop(self, user_id: str) -> None: ...


class AnswerStore(Protocol):
    """Write-behind storage of answers given outside the stateful tier (journal.AnswerJournal)."""

    def ensure_room(self) -> None: ...
    def append(self, answer: Exchange) -> None: ...
    async def flush_user(self, user_id: str, timeout: float) -> None: ...
    def pending_for(self, user_id: str) -> int: ...


class LlmPort(Protocol):
    async def complete(self, request: CompletionInput, timeout: float) -> Completion: ...


class LedgerPort(Protocol):
    async def budget_exceeded(self, user_id: str, timeout: float) -> str | None:
        """A message for the user when today's budget is spent, else None."""
        ...


