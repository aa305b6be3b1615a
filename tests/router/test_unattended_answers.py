"""A cheap-tier answer is paid for once asked: kept even when the caller goes away."""

from __future__ import annotations

import asyncio

import pytest

from services.common.exchange import Exchange
from services.common.pricing import PriceBook
from services.common.usage import Usage
from services.common.vocabulary import Route
from services.router.answering import ChatInput, ChatPolicy, ChatService
from services.router.decision import Router
from services.router.ports import Completion, CompletionInput
from tests.helpers.router_ports import CONTEXT, Cache, Journal, Ledger, Threads


class SlowLlm:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.asked = asyncio.Event()
        self.calls = 0

    async def complete(self, request: CompletionInput, timeout: float) -> Completion:
        self.calls += 1
        self.asked.set()
        await self.release.wait()
        return Completion("Nice. What's next?", request.decision.model,
                          Usage(input_tokens=420, output_tokens=12))


class Kept(Journal):
    def __init__(self) -> None:
        self.answers: list[Exchange] = []

    def append(self, answer: Exchange) -> None:
        self.answers.append(answer)


class Remembered(Cache):
    def __init__(self) -> None:
        self.answers: list[Exchange] = []

    def record(self, answer: Exchange) -> None:
        self.answers.append(answer)


async def test_a_cheap_answer_is_journaled_after_its_caller_went_away() -> None:
    llm, journal, cache = SlowLlm(), Kept(), Remembered()
    service = ChatService(Router.from_files(), Threads(), llm, Ledger(), PriceBook.load(),
                          ChatPolicy(), cache, journal)
    request = ChatInput(user_id="u-gone", message="did my run this morning, felt decent",
                        request_id="r-gone", context=CONTEXT)
    call = asyncio.create_task(service.chat(request, 5.0))
    await asyncio.wait_for(llm.asked.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert journal.answers == []
    llm.release.set()
    await service.finish(5.0)
    assert len(journal.answers) == 1 and len(cache.answers) == 1
    kept = journal.answers[0]
    assert (kept.request_id, kept.route, kept.coach_texts) == (
        "r-gone", Route.COMPLETIONS, ("Nice. What's next?",))
    assert kept.answer_usage.input_tokens == 420  # the charge goes to the ledger with it
    assert llm.calls == 1


async def test_canned_replies_take_no_detour() -> None:
    """No task per canned reply: nothing upstream to keep."""

    class Refusing:
        async def run(self, work: object, **_: object) -> Exchange:
            raise AssertionError("a canned reply went through Unattended")

    journal = Kept()
    service = ChatService(Router.from_files(), Threads(), SlowLlm(), Ledger(), PriceBook.load(),
                          ChatPolicy(), Remembered(), journal)
    service._unattended = Refusing()  # type: ignore[assignment]
    result = await service.chat(ChatInput(user_id="u1", message="good morning",
                                          request_id="r1", context=CONTEXT), 5.0)
    assert result.answer.route is Route.PATTERN and len(journal.answers) == 1
