"""Waiting for a condition instead of sleeping: the one poll helper of the tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str | Callable[[], str] = "",
) -> T:
    """Polls ``condition`` (a function or a coroutine function) until it returns something
    truthy, and returns that. Fails the test with ``what`` (text, or a function giving it,
    for the state at the time) when ``timeout`` seconds pass first.

    The timeout only bounds a failing test: a passing one returns as soon as the condition
    holds, so it can be generous on a slow, shared machine.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"not true after {timeout:g}s: {detail or condition}")
        await asyncio.sleep(interval)
