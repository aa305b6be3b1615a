"""The upstream failing: retries, deadlines, rate limits, the circuit breaker.

Faults are injected by the offline server; every test clears them at the end.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from coach.llm.v1 import llm_service_pb2 as pb
from prometheus_client import REGISTRY

from tests.helpers.polling import eventually
from tests.helpers.services import running_llm
from tests.helpers.status import failure_of

pytestmark = pytest.mark.usefixtures("healthy_upstream")

FAST_RETRIES = {"COACH_RETRY_BASE_SECONDS": "0.01", "COACH_RETRY_MAX_SECONDS": "0.05"}
HELLO = pb.CompleteRequest(
    user_id="u-faults", message="how do I start journaling?",
    generation=pb.Generation(model="gpt-5.4-mini", max_output_tokens=40),
)


def reason(error: grpc.aio.AioRpcError) -> str:
    return failure_of(error).reason


async def failing(call: Any) -> tuple[grpc.aio.AioRpcError, float]:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    return failed.value, time.monotonic() - started


async def test_a_passing_500_is_retried_and_the_user_gets_an_answer(offline_openai: Any) -> None:
    async with running_llm(offline_openai, FAST_RETRIES) as llm:
        offline_openai.faults.set("error_500", count=2)
        injected = offline_openai.stats.faults_injected
        reply = await llm.stub.Complete(HELLO, timeout=5)
        assert reply.text
        assert offline_openai.stats.faults_injected - injected == 2


async def test_a_persistent_500_is_unavailable_after_bounded_retries(offline_openai: Any) -> None:
    async with running_llm(offline_openai, FAST_RETRIES) as llm:
        offline_openai.faults.set("error_500")
        injected = offline_openai.stats.faults_injected
        error, _ = await failing(llm.stub.Complete(HELLO, timeout=5))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert reason(error) == "UPSTREAM_UNAVAILABLE"
        assert offline_openai.stats.faults_injected - injected == 3  # COACH_UPSTREAM_MAX_ATTEMPTS


async def test_rate_limit_honours_retry_after_then_is_resource_exhausted(offline_openai: Any) -> None:
    async with running_llm(offline_openai) as llm:
        offline_openai.faults.set("error_429", retry_after_s=1)
        injected = offline_openai.stats.faults_injected
        error, took = await failing(llm.stub.Complete(HELLO, timeout=5))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(error) == "UPSTREAM_RATE_LIMITED"
        assert offline_openai.stats.faults_injected - injected == 3
        # Waited Retry-After twice (a lower bound: sleeping is never shorter), and said so
        # itself within the caller's deadline (past it, the caller would see DEADLINE_EXCEEDED).
        assert took >= 2.0

        offline_openai.faults.set("error_429", retry_after_s=30)
        injected = offline_openai.stats.faults_injected
        error, _ = await failing(llm.stub.Complete(HELLO, timeout=5))
        # Waiting 30 s could not fit in a 5 s deadline: it gave up at once, one attempt, and
        # said so before the deadline.
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert offline_openai.stats.faults_injected - injected == 1


async def test_a_hanging_upstream_is_cut_within_the_callers_deadline(offline_openai: Any) -> None:
    async with running_llm(offline_openai) as llm:
        conv = await llm.stub.CreateConversation(pb.CreateConversationRequest(user_id="u-hang"),
                                                 timeout=5)
        offline_openai.faults.set("hang")
        error, _ = await failing(llm.stub.Complete(HELLO, timeout=2))
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        await eventually(lambda: hung_up(offline_openai) >= 1,
                         what="the llm service hanging up on the hung upstream request")
        error, _ = await failing(llm.stub.StatefulTurn(
            pb.StatefulTurnRequest(user_id="u-hang", conversation_id=conv.conversation_id,
                                   message="hey", generation=pb.Generation(model="gpt-5.5")),
            timeout=2,
        ))
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert reason(error) in ("UPSTREAM_TIMEOUT", "")
        await eventually(lambda: hung_up(offline_openai) >= 2,
                         what="the llm service hanging up on the hung upstream request")


def hung_up(offline_openai: Any) -> int:
    """Upstream requests the offline server held (HANG) until their client hung up."""
    return int(offline_openai.stats.statuses[499])


def breaker_gauge(tier: str) -> float | None:
    return REGISTRY.get_sample_value("coach_breaker_open", {"upstream": tier})


async def test_breaker_opens_fails_fast_and_closes_when_the_upstream_is_back(
    offline_openai: Any,
) -> None:
    env = {**FAST_RETRIES, "COACH_UPSTREAM_MAX_ATTEMPTS": "1", "COACH_BREAKER_FAILURES": "3",
           "COACH_BREAKER_COOLDOWN_SECONDS": "0.5"}
    async with running_llm(offline_openai, env) as llm:
        conv = await llm.stub.CreateConversation(pb.CreateConversationRequest(user_id="u-breaker"),
                                                 timeout=5)
        offline_openai.faults.set("error_500", path_prefix="/v1/chat")  # the cheap tier only
        for _ in range(3):
            error, _ = await failing(llm.stub.Complete(HELLO, timeout=5))
            assert reason(error) == "UPSTREAM_UNAVAILABLE"
        assert breaker_gauge("cheap") == 1.0

        requests = offline_openai.stats.snapshot()["total_requests"]
        error, _ = await failing(llm.stub.Complete(HELLO, timeout=5))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert reason(error) == "UPSTREAM_CIRCUIT_OPEN"
        assert offline_openai.stats.snapshot()["total_requests"] == requests  # nothing sent

        # The stateful tier has its own breaker and keeps answering.
        turn = await llm.stub.StatefulTurn(
            pb.StatefulTurnRequest(user_id="u-breaker", conversation_id=conv.conversation_id,
                                   message="hey", generation=pb.Generation(model="gpt-5.5")),
            timeout=5,
        )
        assert turn.texts

        offline_openai.faults.clear()  # the upstream is back

        async def answered() -> bool:
            try:
                return bool((await llm.stub.Complete(HELLO, timeout=5)).text)
            except grpc.aio.AioRpcError as open_still:  # failing fast until the cool-down ends
                assert reason(open_still) == "UPSTREAM_CIRCUIT_OPEN"
                return False

        await eventually(answered, what="a probe after the cool-down closing the breaker")
        assert breaker_gauge("cheap") == 0.0
        assert (await llm.stub.Complete(HELLO, timeout=5)).text


async def test_an_assistants_run_cut_at_the_deadline_leaves_the_thread_usable(
    offline_openai: Any,
) -> None:
    env = {"COACH_STATEFUL_API": "assistants", "COACH_RUN_POLL_SECONDS": "0.01"}
    async with running_llm(offline_openai, env) as llm:
        thread = await llm.stub.CreateConversation(pb.CreateConversationRequest(user_id="u-run"),
                                                   timeout=5)
        turn = pb.StatefulTurnRequest(user_id="u-run", conversation_id=thread.conversation_id,
                                      message="hey", generation=pb.Generation(model="gpt-5.5"))
        # The first poll of the run hangs: the turn fails within the caller's deadline ...
        offline_openai.faults.set("hang", count=1,
                                  path_prefix=f"/v1/threads/{thread.conversation_id}/runs/")
        error, _ = await failing(llm.stub.StatefulTurn(turn, timeout=2))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        # ... and the abandoned run is being cancelled; the user's next turn waits for the
        # cancel to finish (the thread takes no message while a run is "cancelling") and is
        # answered.
        runs = offline_openai.store.thread(thread.conversation_id).runs
        await eventually(lambda: all(r.body["status"] in ("cancelled", "cancelling", "completed",
                                                          "failed", "expired")
                                     for r in runs.values()),
                         what="the abandoned run being cancelled")
        assert (await llm.stub.StatefulTurn(turn, timeout=5)).texts
        assert all(r.body["status"] != "cancelling" for r in runs.values())


def upstream_requests(offline_openai: Any, path: str) -> int:
    return sum(n for endpoint, n in offline_openai.stats.requests.items() if path in endpoint)


async def abandoned_midway(offline_openai: Any, path: str, call: Any) -> None:
    """``call``'s upstream request to ``path`` takes 400 ms; its caller cancels it once the
    request reached the upstream. Returns once the upstream answered it."""
    offline_openai.faults.set("latency", latency_ms=400, count=1, path_prefix=path)
    arrived, answered = upstream_requests(offline_openai, path), offline_openai.stats.faults_injected
    await eventually(lambda: upstream_requests(offline_openai, path) > arrived,
                     what=f"the request to {path} reaching the upstream")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: offline_openai.stats.faults_injected > answered,
                     what=f"the upstream answering the request to {path}")


async def test_a_turn_whose_caller_went_away_is_finished_and_the_retry_gets_it(
    llm: Any, offline_openai: Any, upstream_client: Any
) -> None:
    """The caller (threads) goes away mid-turn: the upstream call it started goes on, and the
    retry with the same request id gets that answer; no second call, no message sent twice."""
    conversation = await llm.stub.CreateConversation(
        pb.CreateConversationRequest(user_id="u-gone"), timeout=5)
    turn = pb.StatefulTurnRequest(
        request_id="gone-1", user_id="u-gone", conversation_id=conversation.conversation_id,
        message="i keep skipping my evening walks", generation=pb.Generation(model="gpt-5.5"))
    calls_before = offline_openai.stats.model_calls
    await abandoned_midway(offline_openai, "/v1/responses", llm.stub.StatefulTurn(turn, timeout=10))
    # The turn went on without its caller: the upstream answered (and would have charged).
    assert offline_openai.stats.model_calls - calls_before == 1
    retried = await llm.stub.StatefulTurn(turn, timeout=5)
    assert retried.texts
    assert offline_openai.stats.model_calls - calls_before == 1  # that answer, not a new call
    items = await upstream_client.conversations.items.list(conversation.conversation_id)
    sent = [item for item in items.data
            if getattr(item, "role", "") == "user" and "evening walks" in item.content[0].text]
    assert len(sent) == 1


async def test_a_completion_whose_caller_went_away_is_the_retrys_answer(
    llm: Any, offline_openai: Any
) -> None:
    """A router that died mid-call retries with the same request id after its restart: the
    answer the upstream gave the first call (and charged for) is the one it gets."""
    request = pb.CompleteRequest(request_id="gone-cheap-1", user_id="u-gone-cheap",
                                 message="did my run this morning",
                                 generation=pb.Generation(model="gpt-5.4-mini"))
    calls_before = offline_openai.stats.model_calls
    await abandoned_midway(offline_openai, "/v1/chat", llm.stub.Complete(request, timeout=10))
    assert offline_openai.stats.model_calls - calls_before == 1  # answered without its caller
    first = await llm.stub.Complete(request, timeout=5)
    again = await llm.stub.Complete(request, timeout=5)
    assert first.text and first.text == again.text and first.usage == again.usage
    assert offline_openai.stats.model_calls - calls_before == 1


# ---- background upkeep at the flex tier ---------------------------------------------------

def background_summary(user_id: str) -> pb.SummarizeRequest:
    return pb.SummarizeRequest(
        user_id=user_id, previous_summary="Wants to run a 10k by June.", model="gpt-5.4-mini",
        turns=[pb.ChatTurn(role=pb.TURN_ROLE_USER, text="ran 5k this morning"),
               pb.ChatTurn(role=pb.TURN_ROLE_COACH, text="Good. Same time tomorrow?")],
        background=True)


async def test_a_background_summary_goes_at_the_flex_tier_and_is_billed_as_flex(
    llm: Any, offline_openai: Any
) -> None:
    reply = await llm.stub.Summarize(background_summary("u-flex-1"), timeout=5)
    assert reply.summary and reply.usage.service_tier == "flex"
    waited_on = await llm.stub.Summarize(
        pb.SummarizeRequest(user_id="u-flex-1", previous_summary="x", model="gpt-5.4-mini",
                            turns=[pb.ChatTurn(role=pb.TURN_ROLE_USER, text="slept 8 hours")]),
        timeout=5)
    assert waited_on.usage.service_tier == "default"  # a rotation's summary is not flex


async def test_flex_out_of_capacity_is_retried_and_never_pauses_the_cheap_tier(
    offline_openai: Any
) -> None:
    async with running_llm(offline_openai, FAST_RETRIES) as llm:
        offline_openai.faults.set("flex_unavailable", count=1, retry_after_s=0)
        injected = offline_openai.stats.faults_injected
        reply = await llm.stub.Summarize(background_summary("u-flex-2"), timeout=5)
        assert reply.usage.service_tier == "flex"
        assert offline_openai.stats.faults_injected - injected == 1  # refused once, retried

        # No flex capacity at all: the caller hears RESOURCE_EXHAUSTED after the retries
        # (the threads service leaves those messages to the next rotation) ...
        offline_openai.faults.set("flex_unavailable", retry_after_s=0)
        error, _ = await failing(llm.stub.Summarize(background_summary("u-flex-3"), timeout=5))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(error) == "UPSTREAM_RATE_LIMITED"
        # Past the breaker's threshold (5 failed attempts) the background upstream pauses;
        error, _ = await failing(llm.stub.Summarize(background_summary("u-flex-4"), timeout=5))
        error, _ = await failing(llm.stub.Summarize(background_summary("u-flex-5"), timeout=5))
        assert reason(error) == "UPSTREAM_CIRCUIT_OPEN"
        # ... and the cheap tier, on its own breaker, answers as ever.
        assert (await llm.stub.Complete(HELLO, timeout=5)).text
        offline_openai.faults.clear()
