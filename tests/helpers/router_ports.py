"""In-process fakes of the router's ports (``services.router.ports``): a ChatService with
no network, for tests of the answering flow."""

from __future__ import annotations

from services.common.exchange import Exchange, UserState
from services.common.usage import Usage
from services.router.ports import (
    AnswerClaim,
    BegunAnswer,
    Completion,
    CompletionInput,
    UserContextIn,
)

CONTEXT = UserContextIn(display_name="Sam", current_streak=5, local_hour=9)


class Threads:
    async def user_state(self, user_id: str, request_id: str, recent: int,
                         timeout: float) -> UserState:
        return UserState(message_count=10, recent_turns=(), existing=None, messages_today=0,
                         last_canned_reply="")

    async def begin_answer(self, claim: AnswerClaim, recent: int, timeout: float) -> BegunAnswer:
        state = await self.user_state(claim.user_id, "", recent, timeout)
        return BegunAnswer(None, state.message_count, state if recent else None)

    async def abandon_answer(self, claim: AnswerClaim, timeout: float) -> None:
        pass

    async def stateful_turn(self, turn: object, timeout: float) -> Exchange:
        raise AssertionError("no stateful turn in these tests")


class Llm:
    async def complete(self, request: CompletionInput, timeout: float) -> Completion:
        return Completion("Nice. What's next?", request.decision.model,
                          Usage(input_tokens=420, output_tokens=12))


class Ledger:
    async def budget_exceeded(self, user_id: str, timeout: float) -> str | None:
        return None


class Cache:
    def get(self, user_id: str, request_id: str) -> UserState | None:
        return None

    def epoch(self) -> int:
        return 0

    def put(self, user_id: str, state: UserState, epoch: int) -> None:
        pass

    def record(self, answer: Exchange) -> None:
        pass

    def drop(self, user_id: str) -> None:
        pass


class Journal:
    def ensure_room(self) -> None:
        pass

    def append(self, answer: Exchange) -> None:
        pass

    async def flush_user(self, user_id: str, timeout: float) -> None:
        pass

    def pending_for(self, user_id: str) -> int:
        return 0
