"""Deadlines, retries and circuit breakers around every upstream call.

- ``Deadline``: the time an RPC has left, derived from the caller's gRPC
  deadline minus a margin (or a configured budget when the caller sets none).
  Every upstream attempt gets ``min(per-call cap, time left)`` as its timeout.
- ``RetryPolicy``: exponential backoff with full jitter, only on failures
  worth retrying (429, 408, 409, 5xx, timeouts, connection errors); honours
  ``Retry-After``; never sleeps past the deadline.
- ``CircuitBreaker`` per upstream tier: opens after N consecutive failed
  attempts, fails fast while open (UNAVAILABLE, reason UPSTREAM_CIRCUIT_OPEN),
  lets one probe through after a cool-down and closes when it succeeds.
- ``Upstream.call`` ties them together for one logical call, and times each attempt
  (``coach_upstream_attempt_seconds``, by API and outcome).

Errors reach the caller as domain errors (mapped to gRPC status by the shared
interceptor):

====================================  ===================  =====================
upstream failure                      gRPC code            ErrorInfo reason
====================================  ===================  =====================
429                                   RESOURCE_EXHAUSTED   UPSTREAM_RATE_LIMITED
5xx, 408, 409                         UNAVAILABLE          UPSTREAM_UNAVAILABLE
connection error                      UNAVAILABLE          UPSTREAM_UNAVAILABLE
timeout                               UNAVAILABLE          UPSTREAM_TIMEOUT
breaker open                          UNAVAILABLE          UPSTREAM_CIRCUIT_OPEN
400, 413, 422                         INVALID_ARGUMENT     UPSTREAM_REJECTED
404                                   NOT_FOUND            UPSTREAM_NOT_FOUND
401, 403                              FAILED_PRECONDITION  UPSTREAM_AUTH
no time left before the first try     DEADLINE_EXCEEDED    UPSTREAM_DEADLINE
====================================  ===================  =====================

401/403 are FAILED_PRECONDITION, not UNAUTHENTICATED: our caller's
credentials are fine; the operator's upstream key is wrong, and retrying the
same call will not help until the configuration changes.

Nothing here imports grpc or openai; ``services.llm.upstream`` classifies SDK
exceptions into ``FailedAttempt``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from services.common.errors import (
    CoachError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from services.common.metrics import BREAKER_STATE, UPSTREAM_ERRORS, UPSTREAM_LATENCY

log = logging.getLogger(__name__)

T = TypeVar("T")

# An attempt with less time than this left is not worth starting.
MIN_ATTEMPT_S = 0.05
# Retry-After values beyond this are not honoured (we give up instead).
MAX_RETRY_AFTER_S = 60.0


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Deadline:
    expires_at: float
    clock: Clock

    @classmethod
    def after(cls, clock: Clock, seconds: float) -> Deadline:
        return cls(clock.now() + max(seconds, 0.0), clock)

    @classmethod
    def for_rpc(
        cls, clock: Clock, time_remaining: float | None, *, margin_s: float, budget_s: float
    ) -> Deadline:
        """The caller's deadline less ``margin_s``; ``budget_s`` when the caller set none."""
        if time_remaining is None:
            return cls.after(clock, budget_s)
        return cls.after(clock, min(time_remaining - margin_s, budget_s))

    def remaining(self) -> float:
        return max(self.expires_at - self.clock.now(), 0.0)

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0


class FailureKind(enum.Enum):
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    REJECTED = "rejected"
    NOT_FOUND = "not_found"
    AUTH = "auth"


RETRYABLE = frozenset(
    {FailureKind.RATE_LIMITED, FailureKind.SERVER_ERROR, FailureKind.TIMEOUT, FailureKind.CONNECTION}
)


@dataclass(frozen=True)
class FailedAttempt:
    """One failed upstream attempt, classified: retried, counted by the breaker, and at the
    end turned into the domain error the caller sees (``to_error``). The router's
    ``UpstreamFailure`` is another thing: its signal to answer with a fallback."""

    kind: FailureKind
    message: str
    status: int | None = None
    retry_after_s: float | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    @property
    def is_outage(self) -> bool:
        """Counts against the breaker: the endpoint failed, not our request."""
        return self.kind in RETRYABLE

    @property
    def metric_kind(self) -> str:
        return f"http_{self.status}" if self.status else self.kind.value

    def to_error(self, upstream: str) -> CoachError:
        meta = {"upstream": upstream}
        if self.status:
            meta["http_status"] = str(self.status)
        where = f"the {upstream} upstream"
        if self.kind is FailureKind.RATE_LIMITED:
            return ResourceExhausted(
                f"{where} is rate limiting us: {self.message}",
                reason="UPSTREAM_RATE_LIMITED",
                metadata=meta,
                retry_after_s=self.retry_after_s,
            )
        if self.kind is FailureKind.TIMEOUT:
            return Unavailable(
                f"{where} did not answer in time: {self.message}",
                reason="UPSTREAM_TIMEOUT",
                metadata=meta,
            )
        if self.kind in (FailureKind.SERVER_ERROR, FailureKind.CONNECTION):
            return Unavailable(
                f"{where} is unavailable: {self.message}",
                reason="UPSTREAM_UNAVAILABLE",
                metadata=meta,
                retry_after_s=self.retry_after_s,
            )
        if self.kind is FailureKind.NOT_FOUND:
            return NotFound(f"{where} does not know it: {self.message}",
                            reason="UPSTREAM_NOT_FOUND", metadata=meta)
        if self.kind is FailureKind.AUTH:
            return FailedPrecondition(
                f"{where} refused our credentials (check the API key and base URL): {self.message}",
                reason="UPSTREAM_AUTH",
                metadata=meta,
            )
        return InvalidArgument(f"{where} rejected the request: {self.message}",
                               reason="UPSTREAM_REJECTED", metadata=meta)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_s: float = 0.2
    max_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random)

    def backoff(self, retry: int) -> float:
        """Full jitter: uniform(0, min(max, base * 2^retry)) for the ``retry``-th retry (0-based)."""
        ceiling = min(self.max_s, self.base_s * (2**retry))
        return self.rng.uniform(0.0, ceiling)

    def delay(self, retry: int, failure: FailedAttempt) -> float:
        """Retry-After when the upstream sent one (at least the backoff floor), else backoff."""
        if failure.retry_after_s is not None:
            return max(failure.retry_after_s, 0.0)
        return self.backoff(retry)


class BreakerState(enum.Enum):
    CLOSED = 0.0
    HALF_OPEN = 0.5
    OPEN = 1.0


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe.

    ``BREAKER_STATE{upstream}`` is 0 closed, 1 open, 0.5 while a probe is allowed.
    """

    def __init__(self, name: str, *, failure_threshold: int, cooldown_s: float, clock: Clock) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at = 0.0
        self.state = BreakerState.CLOSED
        self._probe_in_flight = False
        BREAKER_STATE.labels(name).set(self.state.value)

    def _set(self, state: BreakerState) -> None:
        if state is self.state:
            return  # every success sets CLOSED again: nothing to log or export
        log.warning(
            "circuit breaker %s", state.name.lower(),
            extra={"upstream": self.name, "breaker": state.name.lower(), "failures": self.failures},
        )
        self.state = state
        BREAKER_STATE.labels(self.name).set(state.value)

    def retry_in(self) -> float:
        """Seconds until a probe may go (0 when closed)."""
        if self.state is BreakerState.CLOSED:
            return 0.0
        return max(self.opened_at + self.cooldown_s - self.clock.now(), 0.0)

    def acquire(self) -> bool:
        """May a call go now? In half-open state only one probe at a time."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.clock.now() < self.opened_at + self.cooldown_s:
                return False
            self._set(BreakerState.HALF_OPEN)
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def release(self) -> None:
        """The acquired call ended without a verdict (cancelled): free the probe slot."""
        self._probe_in_flight = False

    def record_success(self) -> None:
        self._probe_in_flight = False
        self.failures = 0
        self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._probe_in_flight = False
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self.opened_at = self.clock.now()
            self._set(BreakerState.OPEN)


Classifier = Callable[[BaseException], "FailedAttempt | None"]


class Upstream:
    """One upstream tier: its breaker, retry policy, per-call timeout cap and clock."""

    def __init__(
        self,
        name: str,
        *,
        breaker: CircuitBreaker,
        policy: RetryPolicy,
        classify: Classifier,
        call_timeout_s: float,
        clock: Clock,
        max_in_flight: int = 64,
    ) -> None:
        self.name = name
        self.breaker = breaker
        self.policy = policy
        self.classify = classify
        self.call_timeout_s = call_timeout_s
        self.clock = clock
        # A bulkhead: at most this many calls in flight; the rest wait (within their
        # deadline) rather than all contending for the CPU and the connection pool.
        self._in_flight = asyncio.Semaphore(max_in_flight)

    def _failure(self, exc: BaseException) -> FailedAttempt | None:
        if isinstance(exc, TimeoutError):
            return FailedAttempt(FailureKind.TIMEOUT, "timed out")
        return self.classify(exc)

    async def call(
        self,
        api: str,
        op: Callable[[float], Awaitable[T]],
        deadline: Deadline,
        *,
        retry_timeouts: bool = True,
    ) -> T:
        """Runs ``op(timeout_s)`` with retries, the breaker, and the deadline.

        ``retry_timeouts=False`` for calls that create state upstream, where a
        timed-out attempt may still have taken effect.
        """
        last: FailedAttempt | None = None
        for attempt in range(self.policy.max_attempts):
            remaining = deadline.remaining()
            if remaining < MIN_ATTEMPT_S:
                break
            if not self.breaker.acquire():
                if last is not None:
                    break
                UPSTREAM_ERRORS.labels(api, "circuit_open").inc()
                retry_in = self.breaker.retry_in()
                raise Unavailable(
                    f"the {self.name} upstream is failing; calls are paused for {retry_in:.1f}s",
                    reason="UPSTREAM_CIRCUIT_OPEN",
                    metadata={"upstream": self.name},
                    retry_after_s=retry_in,
                )
            try:
                if self._in_flight.locked():
                    async with asyncio.timeout(remaining):
                        await self._in_flight.acquire()
                else:
                    await self._in_flight.acquire()  # a free slot: taken at once
            except TimeoutError:
                self.breaker.release()
                raise Unavailable(
                    f"the {self.name} upstream has too many calls in flight; none freed up in time",
                    reason="UPSTREAM_BUSY",
                    metadata={"upstream": self.name},
                ) from None
            timeout = min(self.call_timeout_s, deadline.remaining())
            started = time.perf_counter()
            try:
                try:
                    async with asyncio.timeout(timeout):
                        result = await op(timeout)
                finally:
                    self._in_flight.release()
            except asyncio.CancelledError:
                self.breaker.release()
                UPSTREAM_LATENCY.labels(api, "cancelled").observe(time.perf_counter() - started)
                raise
            except Exception as exc:
                failure = self._failure(exc)
                if failure is None:
                    self.breaker.release()
                    raise
                UPSTREAM_LATENCY.labels(api, failure.kind.value).observe(
                    time.perf_counter() - started)
                UPSTREAM_ERRORS.labels(api, failure.metric_kind).inc()
                if failure.is_outage:
                    self.breaker.record_failure()
                else:
                    self.breaker.record_success()  # the endpoint answered; our request was bad
                log.warning(
                    "upstream call failed",
                    extra={"upstream": self.name, "api": api, "attempt": attempt + 1,
                           "failure": failure.kind.value, "http_status": failure.status,
                           "detail": failure.message[:300]},
                )
                if not failure.retryable or (
                    failure.kind is FailureKind.TIMEOUT and not retry_timeouts
                ):
                    raise failure.to_error(self.name) from None
                last = failure
                if attempt + 1 >= self.policy.max_attempts:
                    break
                delay = self.policy.delay(attempt, failure)
                if delay > MAX_RETRY_AFTER_S or delay + MIN_ATTEMPT_S >= deadline.remaining():
                    break  # the next try could not finish in time
                await self.clock.sleep(delay)
                continue
            UPSTREAM_LATENCY.labels(api, "ok").observe(time.perf_counter() - started)
            self.breaker.record_success()
            return result
        if last is None:
            raise DeadlineExceeded(
                "not enough time left before the caller's deadline to call the upstream",
                reason="UPSTREAM_DEADLINE",
                metadata={"upstream": self.name},
            )
        raise last.to_error(self.name)
