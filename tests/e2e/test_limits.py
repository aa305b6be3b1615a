"""Daily limits: checked before any upstream call; crisis messages answered anyway."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from coach.ledger.v1 import ledger_service_pb2
from coach.router.v1 import router_service_pb2
from coach.type.v1 import types_pb2

from services.common.rich_status import error_from_rpc
from tests.helpers.polling import eventually
from tests.helpers.suite import Suite, start_suite, stop_suite, stored_count


@pytest.fixture(scope="module")
async def limited(pg_url: str, offline_openai: Any) -> AsyncIterator[Suite]:
    """Three messages a day. (No budget here: whether the ledger had heard of the first
    answers' cost by the third message would decide which limit refuses first.)"""
    running = await start_suite(pg_url, offline_openai, {"COACH_USER_DAILY_MESSAGES": "3"})
    yield running
    await stop_suite(running)


@pytest.fixture(scope="module")
async def budgeted(pg_url: str, offline_openai: Any) -> AsyncIterator[Suite]:
    """A budget of a millionth of a dollar a day: one stateful answer spends it."""
    running = await start_suite(pg_url, offline_openai, {"COACH_USER_DAILY_BUDGET_USD": "0.000001"})
    yield running
    await stop_suite(running)


def ask(user: str, text: str) -> router_service_pb2.ChatRequest:
    return router_service_pb2.ChatRequest(
        user_id=user, message=text, request_id=uuid.uuid4().hex,
        context=types_pb2.UserContext(current_streak=2, local_hour=20))


async def test_over_the_daily_limit_is_refused_but_a_crisis_is_answered(limited: Suite) -> None:
    user = f"user-{uuid.uuid4().hex[:12]}"
    for text in ("hey", "I want to sleep better", "thanks"):
        await limited.router.Chat(ask(user, text), timeout=15)
    calls_before = limited.upstream.stats.snapshot()["model_calls"]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await limited.router.Chat(ask(user, "quick q: is napping ok?"), timeout=15)
    code, reason, _ = error_from_rpc(refused.value)
    assert (code, reason) == ("RESOURCE_EXHAUSTED", "DAILY_MESSAGE_LIMIT")
    assert "resets at midnight UTC" in (refused.value.details() or "")
    assert limited.upstream.stats.snapshot()["model_calls"] == calls_before  # no upstream call
    assert await stored_count(limited, user, 3) == 3  # the refused message is not stored

    crisis = await limited.router.Chat(ask(user, "i don't want to be here anymore"), timeout=15)
    assert crisis.route == types_pb2.ROUTE_ASSISTANT
    assert crisis.message_type == types_pb2.MESSAGE_TYPE_CRISIS


async def test_over_the_daily_budget_is_refused(budgeted: Suite) -> None:
    user = f"user-{uuid.uuid4().hex[:12]}"
    first = await budgeted.router.Chat(ask(user, "hey coach"), timeout=15)  # stateful: costs money
    assert first.cost_usd_nanos > 1000

    async def exceeded() -> str:  # the ledger learns of the spend through the outbox relay
        limits = await budgeted.ledger.CheckUserLimits(
            ledger_service_pb2.CheckUserLimitsRequest(user_id=user))
        return limits.exceeded

    await eventually(exceeded, what="the ledger seeing the day's budget spent")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await budgeted.router.Chat(ask(user, "what's up"), timeout=15)
    code, reason, _ = error_from_rpc(refused.value)
    assert (code, reason) == ("RESOURCE_EXHAUSTED", "DAILY_BUDGET_EXCEEDED")
    assert refused.value.details()  # a sentence the app can show
