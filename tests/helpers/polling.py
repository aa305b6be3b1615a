"""Waiting for a condition instead of sleeping: the tests' one way to wait.

``eventually`` polls a condition until it holds and returns what it returned; the
timeout only bounds a failing test (a passing one goes on the moment the condition
holds), so it can be generous on a slow, shared machine. ``eventually_blocking`` is the
same for the few synchronous tests that drive processes (the supervisor's).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT_S = 10.0
INTERVAL_S = 0.02


def _failure(timeout: float, condition: object, what: str | Callable[[], str]) -> AssertionError:
    detail = what() if callable(what) else what
    return AssertionError(f"not true after {timeout:g}s: {detail or condition}")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    what: str | Callable[[], str] = "",
) -> T:
    """Polls ``condition`` (a function or a coroutine function) until it returns something
    truthy, and returns that. Fails the test with ``what`` (text, or a function giving it,
    for the state at the time) when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _failure(timeout, condition, what)
        await asyncio.sleep(interval)


def eventually_blocking(
    condition: Callable[[], T],
    *,
    timeout: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    what: str | Callable[[], str] = "",
) -> T:
    """``eventually`` for synchronous tests: blocks while it polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(timeout, condition, what)
        time.sleep(interval)
