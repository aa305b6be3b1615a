"""The router's line per answer: every upstream answer at INFO with its tokens and cost; a
canned reply (no upstream call, no cost) only at DEBUG. The line is written once the reply
is on its way (the loop's next turn), not on the reply's path."""

from __future__ import annotations

import logging

import pytest

from services.common.pricing import PriceBook
from services.router.answering import ChatInput, ChatPolicy, ChatService
from services.router.decision import Router
from tests.helpers.polling import eventually
from tests.helpers.router_ports import CONTEXT, Cache, Journal, Ledger, Llm, Threads


@pytest.fixture(scope="module")
def service() -> ChatService:
    return ChatService(Router.from_files(), Threads(), Llm(), Ledger(), PriceBook.load(),
                       ChatPolicy(), Cache(), Journal())


async def answered(service: ChatService, caplog: pytest.LogCaptureFixture,
                   text: str) -> list[logging.LogRecord]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="services.router.answering"):
        await service.chat(ChatInput("u1", text, context=CONTEXT), 5.0)
        assert not [r for r in caplog.records if r.getMessage() == "answered"], \
            "the line is written after the reply, not before"
        # written on the loop's next turn, once the reply is on its way
        return await eventually(lambda: [r for r in caplog.records
                                         if r.getMessage() == "answered"],
                                what="the answer's log line")


async def test_an_upstream_answer_is_logged_at_info_with_its_tokens_and_cost(
    service: ChatService, caplog: pytest.LogCaptureFixture
) -> None:
    [record] = await answered(service, caplog, "did my run this morning, felt decent")
    assert record.levelno == logging.INFO
    assert vars(record)["route"] == "COMPLETIONS"
    assert vars(record)["input_tokens"] == 420 and vars(record)["cost_usd_nanos"] > 0


async def test_a_canned_reply_is_logged_at_debug_only(
    service: ChatService, caplog: pytest.LogCaptureFixture
) -> None:
    [record] = await answered(service, caplog, "hey")
    assert record.levelno == logging.DEBUG and vars(record)["route"] == "PATTERN"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="services.router.answering"):
        await service.chat(ChatInput("u1", "hey", context=CONTEXT), 5.0)
    assert not [r for r in caplog.records if r.getMessage() == "answered"]


async def test_the_coach_turn_of_an_answer_is_read_ahead_after_the_reply() -> None:
    router = Router.from_files()
    service = ChatService(router, Threads(), Llm(), Ledger(), PriceBook.load(), ChatPolicy(),
                          Cache(), Journal())
    await service.chat(ChatInput("u1", "did my run this morning, felt decent", context=CONTEXT), 5.0)
    assert "Nice. What's next?" not in router._classifier._coach_turns
    await eventually(lambda: "Nice. What's next?" in router._classifier._coach_turns,
                     what="the coach turn read ahead")
