"""Router.Chat end to end, one test per route, over gRPC.

The whole suite runs in-process (see conftest): what a caller of the router
sees, what the threads service stored and what the ledger charged.
"""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest
from coach.ledger.v1 import ledger_service_pb2
from coach.router.v1 import router_service_pb2
from coach.threads.v1 import threads_service_pb2
from coach.type.v1 import types_pb2

from tests.helpers.polling import eventually
from tests.helpers.suite import Suite, stored_count, stored_messages


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def chat(suite: Suite, user: str, text: str, *, hour: int = 10, streak: int = 5,
               request_id: str | None = None, timeout: float = 15.0) -> router_service_pb2.ChatResponse:
    return await suite.router.Chat(
        router_service_pb2.ChatRequest(
            user_id=user,
            message=text,
            request_id=request_id or uuid.uuid4().hex,
            context=types_pb2.UserContext(display_name="Sam", current_streak=streak, local_hour=hour),
        ),
        timeout=timeout,
    )


async def onboarded_user(suite: Suite) -> str:
    """A user past the first three messages (which always go to the stateful tier)."""
    user = new_user()
    for text in ("hi, I'm new here", "I want to run a 10k this spring", "mostly mornings work for me"):
        await chat(suite, user, text)
    return user


async def user_ledger(suite: Suite, user: str) -> tuple[int, int]:
    """(calls, cost in nanos) the ledger holds for ``user`` today."""
    calls = cost = 0
    token = ""
    while True:
        page = await suite.ledger.GetDailyReport(
            ledger_service_pb2.GetDailyReportRequest(
                grouping=ledger_service_pb2.REPORT_GROUPING_USER, page_size=1000, page_token=token
            )
        )
        for row in page.rows:
            if row.key == user:
                calls += row.calls
                cost += row.cost_usd_nanos
        token = page.next_page_token
        if not token:
            return calls, cost


async def ledger_settled(suite: Suite, user: str, calls: int) -> tuple[int, int]:
    """(calls, cost) the ledger holds for ``user`` once it holds ``calls`` answers and threads'
    outbox has none of theirs left to send (records travel by it): no more can arrive."""

    async def settled() -> tuple[int, int] | None:
        seen = await user_ledger(suite, user)
        if seen[0] < calls:
            return None
        conn = await asyncpg.connect(suite.env["DATABASE_URL"])
        try:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM threads.outbox WHERE record->>'user_id' = $1", user)
        finally:
            await conn.close()
        return seen if waiting == 0 else None

    return await eventually(settled, what=f"the ledger holding {calls} answers of {user}")


async def test_first_messages_go_to_the_stateful_tier_with_a_conversation(suite: Suite) -> None:
    user = new_user()
    reply = await chat(suite, user, "hey")
    assert reply.route == types_pb2.ROUTE_ASSISTANT
    assert reply.conversation_id
    assert reply.messages and reply.messages[0]
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert reply.cost_usd_nanos > 0
    assert reply.model == "gpt-5.4"  # an onboarding greeting: the stateful tier's half-price model
    second = await chat(suite, user, "what should I do first?")
    assert second.route == types_pb2.ROUTE_ASSISTANT
    assert second.conversation_id == reply.conversation_id  # one conversation per user


async def test_a_greeting_gets_a_canned_reply_by_local_hour_for_free(suite: Suite) -> None:
    user = await onboarded_user(suite)
    calls_before = suite.upstream.stats.snapshot()["model_calls"]
    morning = await chat(suite, user, "good morning", hour=7)
    assert morning.route == types_pb2.ROUTE_PATTERN
    assert morning.pattern == "greeting_morning"
    assert morning.cost_usd_nanos == 0 and morning.usage.input_tokens == 0 and not morning.model
    evening = await chat(suite, user, "hey", hour=23)
    assert evening.pattern == "greeting_evening"
    assert suite.upstream.stats.snapshot()["model_calls"] == calls_before
    # stored by the router's journal a moment after the reply
    stored = await stored_messages(suite, user, 10)  # three onboarding exchanges and these two
    assert stored[-2:] == ["hey", evening.messages[0]]


async def test_a_simple_question_goes_to_the_cheap_tier(suite: Suite) -> None:
    user = await onboarded_user(suite)
    reply = await chat(suite, user, "quick q: is it ok to train two days in a row?")
    assert reply.route == types_pb2.ROUTE_COMPLETIONS, reply
    assert reply.model == "gpt-5.4-mini"
    assert reply.usage.input_tokens > 0
    assert reply.cost_usd_nanos > 0
    assert not reply.conversation_id


async def test_self_harm_always_reaches_the_stateful_tier_as_crisis(suite: Suite) -> None:
    user = await onboarded_user(suite)
    reply = await chat(suite, user, "honestly I'm done with life")
    assert reply.route == types_pb2.ROUTE_ASSISTANT
    assert reply.message_type == types_pb2.MESSAGE_TYPE_CRISIS


async def test_a_retry_with_the_same_request_id_is_answered_once_and_charged_once(suite: Suite) -> None:
    user = await onboarded_user(suite)
    request_id = uuid.uuid4().hex
    first = await chat(suite, user, "quick q: how much water should I drink?", request_id=request_id)
    again = await chat(suite, user, "quick q: how much water should I drink?", request_id=request_id)
    assert again.messages == first.messages
    assert again.cost_usd_nanos == first.cost_usd_nanos
    assert await stored_count(suite, user, 4) == 4
    calls, _ = await ledger_settled(suite, user, 4)
    assert calls == 4  # three onboarding answers and this one, once


async def test_the_ledger_records_every_answer_with_its_exact_cost(suite: Suite) -> None:
    user = new_user()
    replies = [await chat(suite, user, text) for text in
               ("hi, I'm new here", "I want to run a 10k this spring", "mostly mornings work for me")]
    replies.append(await chat(suite, user, "thanks!"))
    replies.append(await chat(suite, user, "quick q: is stretching before a run useful?"))
    assert replies[3].route == types_pb2.ROUTE_PATTERN
    assert replies[4].route == types_pb2.ROUTE_COMPLETIONS
    calls, cost = await ledger_settled(suite, user, 5)
    assert calls == 5  # canned answers count as calls too
    assert cost == sum(r.cost_usd_nanos for r in replies)
    report = await suite.ledger.GetCostReport(ledger_service_pb2.GetCostReportRequest())
    assert report.total_calls >= 5
    assert report.total_cost_usd_nanos == sum(row.cost_usd_nanos for row in report.rows)


async def test_classify_decides_without_calling_upstream_or_storing(suite: Suite) -> None:
    user = new_user()
    decision = await suite.router.Classify(
        router_service_pb2.ClassifyRequest(
            user_id=user, message="yo", message_count=10,
            context=types_pb2.UserContext(current_streak=3, local_hour=14),
        )
    )
    assert decision.route == types_pb2.ROUTE_PATTERN
    assert decision.pattern == "greeting_afternoon"
    count = await suite.threads.CountMessages(threads_service_pb2.CountMessagesRequest(user_id=user))
    assert count.count == 0


async def test_bad_input_is_invalid_argument_and_stores_nothing(suite: Suite) -> None:
    user = new_user()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.router.Chat(router_service_pb2.ChatRequest(user_id=user, message="   "))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    count = await suite.threads.CountMessages(threads_service_pb2.CountMessagesRequest(user_id=user))
    assert count.count == 0


async def test_upstream_failure_gets_a_fallback_reply_recorded_like_any_answer(suite: Suite) -> None:
    user = await onboarded_user(suite)
    suite.upstream.faults.set(mode="error_500")
    try:
        reply = await chat(suite, user, "quick q: is it fine to skip breakfast?")
    finally:
        suite.upstream.faults.set(mode="none")
    assert reply.route == types_pb2.ROUTE_FALLBACK
    assert reply.messages and reply.cost_usd_nanos == 0
    stored = await stored_messages(suite, user, 8)  # three onboarding exchanges and this one
    assert stored[-1] == reply.messages[0]
