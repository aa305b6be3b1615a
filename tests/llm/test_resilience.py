"""Deadlines, retries and the circuit breaker, on a fake clock (no network)."""

from __future__ import annotations

import asyncio
import random

import httpx2
import openai
import pytest
from prometheus_client import REGISTRY

from services.common.errors import (
    CoachError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.llm.resilience import (
    BreakerState,
    CircuitBreaker,
    Deadline,
    FailedAttempt,
    FailureKind,
    RetryPolicy,
    SystemClock,
    Upstream,
)
from services.llm.upstream import classify, retry_after_seconds
from tests.helpers.polling import eventually


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class Scripted:
    """An upstream operation that fails as scripted, then succeeds."""

    def __init__(self, clock: FakeClock, failures: list[BaseException], cost_s: float = 0.01) -> None:
        self.clock = clock
        self.failures = list(failures)
        self.cost_s = cost_s
        self.calls = 0
        self.timeouts: list[float] = []

    async def __call__(self, timeout: float) -> str:
        self.calls += 1
        self.timeouts.append(timeout)
        self.clock.t += self.cost_s
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://upstream.test/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    body = {"error": {"message": f"injected {status}", "type": "x"}}
    return openai.APIStatusError(f"status {status}", response=response, body=body)


def make_upstream(
    clock: FakeClock, *, attempts: int = 3, threshold: int = 5, cooldown: float = 10.0,
    call_timeout: float = 20.0,
) -> Upstream:
    return Upstream(
        "cheap",
        breaker=CircuitBreaker("cheap", failure_threshold=threshold, cooldown_s=cooldown, clock=clock),
        policy=RetryPolicy(max_attempts=attempts, base_s=0.2, max_s=5.0, rng=random.Random(7)),
        classify=classify,
        call_timeout_s=call_timeout,
        clock=clock,
    )


def test_deadline_follows_the_callers_deadline_less_a_margin() -> None:
    clock = FakeClock()
    assert Deadline.for_rpc(clock, 2.0, margin_s=0.2, budget_s=30).remaining() == pytest.approx(1.8)
    assert Deadline.for_rpc(clock, None, margin_s=0.2, budget_s=30).remaining() == pytest.approx(30)
    assert Deadline.for_rpc(clock, 100.0, margin_s=0.2, budget_s=30).remaining() == pytest.approx(30)
    assert Deadline.for_rpc(clock, 0.1, margin_s=0.2, budget_s=30).expired


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(base_s=0.2, max_s=1.0, rng=random.Random(1))
    for retry in range(8):
        for _ in range(50):
            assert 0.0 <= policy.backoff(retry) <= min(1.0, 0.2 * 2**retry)
    limited = FailedAttempt(FailureKind.RATE_LIMITED, "slow down", 429, retry_after_s=3.0)
    assert policy.delay(0, limited) == 3.0


async def test_transient_failures_are_retried_then_succeed() -> None:
    clock = FakeClock()
    op = Scripted(clock, [status_error(500), status_error(503)])
    upstream = make_upstream(clock)
    assert await upstream.call("chat", op, Deadline.after(clock, 10)) == "ok"
    assert op.calls == 3
    assert len(clock.sleeps) == 2 and all(s <= 0.8 for s in clock.sleeps)
    assert upstream.breaker.state is BreakerState.CLOSED and upstream.breaker.failures == 0


async def test_each_attempt_gets_the_time_left_capped_per_call() -> None:
    clock = FakeClock()
    op = Scripted(clock, [])
    await make_upstream(clock, call_timeout=20).call("chat", op, Deadline.after(clock, 3))
    assert op.timeouts == [pytest.approx(3)]
    op = Scripted(clock, [])
    await make_upstream(clock, call_timeout=2).call("chat", op, Deadline.after(clock, 30))
    assert op.timeouts == [pytest.approx(2)]


async def test_rejections_are_not_retried() -> None:
    clock = FakeClock()
    op = Scripted(clock, [status_error(400)])
    upstream = make_upstream(clock)
    with pytest.raises(InvalidArgument) as failed:
        await upstream.call("chat", op, Deadline.after(clock, 10))
    assert failed.value.reason == "UPSTREAM_REJECTED"
    assert op.calls == 1 and clock.sleeps == []


async def test_auth_failures_are_an_operator_problem_and_do_not_open_the_breaker() -> None:
    clock = FakeClock()
    upstream = make_upstream(clock, threshold=1)
    with pytest.raises(FailedPrecondition) as failed:
        await upstream.call("chat", Scripted(clock, [status_error(401)]), Deadline.after(clock, 10))
    assert failed.value.reason == "UPSTREAM_AUTH"
    assert upstream.breaker.state is BreakerState.CLOSED


async def test_rate_limit_honours_retry_after_within_the_deadline() -> None:
    clock = FakeClock()
    op = Scripted(clock, [status_error(429, {"retry-after": "1"})] * 10)
    upstream = make_upstream(clock, attempts=10)
    deadline = Deadline.after(clock, 2.5)
    with pytest.raises(ResourceExhausted) as failed:
        await upstream.call("chat", op, deadline)
    assert failed.value.reason == "UPSTREAM_RATE_LIMITED"
    assert failed.value.retry_after_s == 1.0
    assert clock.sleeps == [1.0, 1.0]  # a third sleep would end past the deadline
    assert op.calls == 3
    assert clock.now() <= deadline.expires_at


async def test_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    clock = FakeClock()
    op = Scripted(clock, [status_error(429, {"retry-after": "30"})] * 3)
    with pytest.raises(ResourceExhausted):
        await make_upstream(clock).call("chat", op, Deadline.after(clock, 5))
    assert op.calls == 1 and clock.sleeps == []


async def test_timeouts_map_to_unavailable_and_creating_calls_are_not_retried() -> None:
    clock = FakeClock()
    op = Scripted(clock, [TimeoutError()] * 3)
    with pytest.raises(Unavailable) as failed:
        await make_upstream(clock).call("responses", op, Deadline.after(clock, 10),
                                        retry_timeouts=False)
    assert failed.value.reason == "UPSTREAM_TIMEOUT"
    assert op.calls == 1


async def test_a_hanging_call_is_cut_at_the_deadline() -> None:
    clock = SystemClock()
    upstream = Upstream(
        "cheap",
        breaker=CircuitBreaker("cheap", failure_threshold=5, cooldown_s=10, clock=clock),
        policy=RetryPolicy(max_attempts=3),
        classify=classify,
        call_timeout_s=20,
        clock=clock,
    )

    async def hang(timeout: float) -> None:
        await asyncio.Event().wait()  # an upstream that never answers

    started = clock.now()
    with pytest.raises(Unavailable) as failed:
        await upstream.call("chat", hang, Deadline.after(clock, 0.3))
    assert failed.value.reason == "UPSTREAM_TIMEOUT"
    assert clock.now() - started < 0.5


async def test_no_time_left_is_deadline_exceeded_without_a_call() -> None:
    clock = FakeClock()
    op = Scripted(clock, [])
    with pytest.raises(DeadlineExceeded):
        await make_upstream(clock).call("chat", op, Deadline.after(clock, 0.01))
    assert op.calls == 0


async def test_breaker_opens_fails_fast_probes_and_closes() -> None:
    clock = FakeClock()
    upstream = make_upstream(clock, attempts=1, threshold=3, cooldown=10)
    failing = Scripted(clock, [status_error(502)] * 100)
    for _ in range(3):
        with pytest.raises(Unavailable):
            await upstream.call("chat", failing, Deadline.after(clock, 5))
    assert upstream.breaker.state is BreakerState.OPEN
    calls_before = failing.calls
    with pytest.raises(Unavailable) as fast:
        await upstream.call("chat", failing, Deadline.after(clock, 5))
    assert fast.value.reason == "UPSTREAM_CIRCUIT_OPEN"
    assert fast.value.retry_after_s == pytest.approx(10, abs=0.1)
    assert failing.calls == calls_before  # nothing reached the upstream

    clock.t += 10  # cool-down over; the probe fails: open again for another cool-down
    with pytest.raises(Unavailable) as probe:
        await upstream.call("chat", failing, Deadline.after(clock, 5))
    assert probe.value.reason == "UPSTREAM_UNAVAILABLE"
    assert upstream.breaker.state is BreakerState.OPEN
    with pytest.raises(Unavailable):
        await upstream.call("chat", failing, Deadline.after(clock, 5))
    assert failing.calls == calls_before + 1

    clock.t += 10  # upstream back: the probe succeeds and closes the breaker
    assert await upstream.call("chat", Scripted(clock, []), Deadline.after(clock, 5)) == "ok"
    assert upstream.breaker.state is BreakerState.CLOSED
    assert await upstream.call("chat", Scripted(clock, []), Deadline.after(clock, 5)) == "ok"


async def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("stateful", failure_threshold=1, cooldown_s=1, clock=clock)
    breaker.record_failure()
    assert not breaker.acquire()
    clock.t += 1
    assert breaker.acquire()
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.acquire()  # a second caller during the probe fails fast
    breaker.release()  # probe cancelled: the next caller may probe
    assert breaker.acquire()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.acquire()


def test_classification_of_sdk_errors() -> None:
    assert classify(status_error(429, {"retry-after": "2"})) == FailedAttempt(
        FailureKind.RATE_LIMITED, "injected 429", 429, 2.0
    )
    assert classify(status_error(500)).kind is FailureKind.SERVER_ERROR  # type: ignore[union-attr]
    assert classify(status_error(408)).kind is FailureKind.SERVER_ERROR  # type: ignore[union-attr]
    assert classify(status_error(409)).kind is FailureKind.SERVER_ERROR  # type: ignore[union-attr]
    assert classify(status_error(422)).kind is FailureKind.REJECTED  # type: ignore[union-attr]
    assert classify(status_error(403)).kind is FailureKind.AUTH  # type: ignore[union-attr]
    request = httpx2.Request("POST", "http://upstream.test/v1/responses")
    assert classify(openai.APITimeoutError(request)).kind is FailureKind.TIMEOUT  # type: ignore[union-attr]
    assert classify(openai.APIConnectionError(request=request)).kind is FailureKind.CONNECTION  # type: ignore[union-attr]
    assert classify(ValueError("a bug")) is None


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds(httpx2.Headers({"retry-after": "3"})) == 3.0
    assert retry_after_seconds(httpx2.Headers({"retry-after-ms": "250"})) == 0.25
    assert retry_after_seconds(httpx2.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert retry_after_seconds(httpx2.Headers({})) is None


async def test_a_bulkhead_bounds_calls_in_flight_and_a_busy_caller_gets_a_clear_status() -> None:
    clock = SystemClock()
    upstream = Upstream(
        "cheap",
        breaker=CircuitBreaker("cheap", failure_threshold=5, cooldown_s=10.0, clock=clock),
        policy=RetryPolicy(max_attempts=1, base_s=0.2, max_s=5.0),
        classify=classify,
        call_timeout_s=5.0,
        clock=clock,
        max_in_flight=2,
    )
    in_flight = peak = 0
    release = asyncio.Event()

    async def op(timeout: float) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return "ok"

    calls = [asyncio.create_task(upstream.call("chat", op, Deadline.after(clock, 5.0)))
             for _ in range(5)]
    await eventually(lambda: in_flight == 2, what="two calls in flight")
    assert peak == 2  # the other three wait for a slot
    with pytest.raises(CoachError) as busy:
        await upstream.call("chat", op, Deadline.after(clock, 0.2))
    assert (busy.value.code, busy.value.reason) == ("UNAVAILABLE", "UPSTREAM_BUSY")
    release.set()
    assert await asyncio.gather(*calls) == ["ok"] * 5
    assert peak == 2


def attempts_timed(api: str, outcome: str) -> float:
    labels = {"api": api, "outcome": outcome}
    return REGISTRY.get_sample_value("coach_upstream_attempt_seconds_count", labels) or 0.0


async def test_every_attempt_is_timed_with_its_outcome() -> None:
    """coach_upstream_attempt_seconds: one observation per attempt, labelled ok or its failure;
    an attempt its caller gave up on is 'cancelled', not a failure of the upstream."""
    clock = FakeClock()
    upstream = make_upstream(clock)
    op = Scripted(clock, [status_error(500), status_error(429)])
    assert await upstream.call("timed.api", op, Deadline.after(clock, 10)) == "ok"
    assert [attempts_timed("timed.api", outcome)
            for outcome in ("server_error", "rate_limited", "ok", "cancelled")] == [1, 1, 1, 0]

    started = asyncio.Event()

    async def hang(timeout: float) -> str:
        started.set()
        await asyncio.Event().wait()  # an upstream that never answers
        return "late"

    call = asyncio.create_task(upstream.call("timed.api", hang, Deadline.after(clock, 10)))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert attempts_timed("timed.api", "cancelled") == 1
    assert attempts_timed("timed.api", "server_error") == 1
