"""Keyed llm calls: a retry gets the first answer, and a caller going away cancels nothing."""

from __future__ import annotations

import asyncio

import pytest

from services.llm.idempotency import IdempotencyCache
from tests.helpers.polling import eventually


class Work:
    """An upstream call that takes until ``release`` is set; counts its runs."""

    def __init__(self, fail: bool = False) -> None:
        self.release = asyncio.Event()
        self.runs = 0
        self.finished = 0
        self.fail = fail

    async def __call__(self) -> str:
        self.runs += 1
        await self.release.wait()
        if self.fail:
            raise RuntimeError("upstream said no")
        self.finished += 1
        return f"answer {self.runs}"


async def test_a_caller_going_away_leaves_the_work_running_and_the_retry_gets_its_answer() -> None:
    cache, work = IdempotencyCache(), Work()
    first = asyncio.create_task(cache.run("turn:c1:r1", work))
    await eventually(lambda: work.runs == 1, what="the upstream call under way")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert cache.running == 1  # the upstream call goes on without its caller
    work.release.set()
    await eventually(lambda: work.finished == 1 and cache.running == 0,
                     what="the call finished without its caller")
    assert await cache.run("turn:c1:r1", work) == "answer 1"
    assert work.runs == 1  # the retry did not call the upstream again


async def test_a_retry_while_the_first_runs_waits_for_it() -> None:
    cache, work = IdempotencyCache(), Work()
    first = asyncio.create_task(cache.run("k", work))
    second = asyncio.create_task(cache.run("k", work))
    await eventually(lambda: work.runs == 1, what="the upstream call under way")
    first.cancel()  # the first caller goes away; the second still gets the one answer
    work.release.set()
    assert await second == "answer 1"
    assert work.runs == 1


async def test_failures_are_not_remembered() -> None:
    cache, work = IdempotencyCache(), Work(fail=True)
    work.release.set()
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await cache.run("k", work)
    assert work.runs == 2 and cache.running == 0


async def test_calls_without_a_key_are_plain_calls() -> None:
    cache, work = IdempotencyCache(), Work()
    work.release.set()
    assert await cache.run(None, work) == "answer 1"
    assert await cache.run("", work) == "answer 2"


async def test_the_cache_is_bounded_oldest_first() -> None:
    cache = IdempotencyCache(max_entries=2)
    for key in ("a", "b", "c"):
        work = Work()
        work.release.set()
        await cache.run(key, work)
    again = Work()
    again.release.set()
    await cache.run("a", again)  # forgotten: runs again
    assert again.runs == 1
    await cache.run("c", again)  # remembered
    assert again.runs == 1
