"""Cached prompt prefixes expire after a TTL of inactivity, on a clock a benchmark can set."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from services.offline_openai import OfflineOpenAI
from services.offline_openai.caching import PromptCache
from services.offline_openai.clock import SimClock
from services.offline_openai.config import parse_args

INSTRUCTIONS = " ".join(f"Rule {n}: keep the habit small and specific." for n in range(160))
DAY0 = 1_795_000_000.0  # simulated epoch seconds


async def _cached(client: openai.AsyncOpenAI, text: str = "How do I stay consistent?") -> int:
    response = await client.responses.create(model="gpt-4.1-mini", instructions=INSTRUCTIONS,
                                             input=text)
    assert response.usage is not None
    assert response.usage.input_tokens >= 1024
    return response.usage.input_tokens_details.cached_tokens


async def test_prompt_is_cached_within_the_ttl_and_not_after(
    server: OfflineOpenAI, client: openai.AsyncOpenAI
) -> None:
    server.clock.set(DAY0)
    assert await _cached(client) == 0
    server.clock.set(DAY0 + 599)
    assert await _cached(client) >= 1024  # within 10 minutes: a hit
    server.clock.set(DAY0 + 599 + 601)
    assert await _cached(client) == 0  # idle past the TTL: expired, cached again from now
    assert await _cached(client) >= 1024


async def test_a_hit_refreshes_the_ttl(server: OfflineOpenAI, client: openai.AsyncOpenAI) -> None:
    server.clock.set(DAY0)
    await _cached(client)
    for minute in (8, 16, 24, 32):  # 32 minutes after the first call, never 10 idle
        server.clock.set(DAY0 + 60 * minute)
        assert await _cached(client) >= 1024
    server.clock.set(DAY0 + 60 * 32 + 601)
    assert await _cached(client) == 0


async def test_clock_control_endpoint(server: OfflineOpenAI, client: openai.AsyncOpenAI) -> None:
    root = server.base_url.removesuffix("/v1")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{root}/_control/clock") as got:
            body: dict[str, Any] = await got.json()
        assert body["simulated"] is False
        assert body["cache_ttl_seconds"] == 600
        async with http.post(f"{root}/_control/clock", json={"now": DAY0}) as set_:
            assert set_.status == 200
            assert (await set_.json())["now"] == DAY0
        assert await _cached(client) == 0
        assert await _cached(client) >= 1024
        async with http.post(f"{root}/_control/clock", json={"now": DAY0 + 3600}) as later:
            assert (await later.json())["simulated"] is True
        assert await _cached(client) == 0
        for bad in ({}, {"now": "soon"}, {"now": True}):
            async with http.post(f"{root}/_control/clock", json=bad) as rejected:
                assert rejected.status == 400
                assert (await rejected.json())["error"]["param"] == "now"
        async with http.post(f"{root}/_control/reset") as reset:
            assert reset.status == 200
        assert server.clock.simulated is False


def test_unit_cache_expiry_and_bounded_memory() -> None:
    clock = SimClock()
    clock.set(DAY0)
    cache = PromptCache(max_entries=1000, ttl_seconds=300, clock=clock)
    tokens = list(range(2000))
    assert cache.lookup_and_remember("s", tokens) == 0
    clock.advance(300)
    assert cache.lookup_and_remember("s", tokens) == 1920  # exactly the TTL idle: still warm
    clock.advance(301)
    assert cache.lookup_and_remember("other", tokens) == 0
    assert len(cache) == 8  # the idle scope's prefixes were dropped, not just ignored
    never = PromptCache(ttl_seconds=0, clock=clock)
    never.lookup_and_remember("s", tokens)
    clock.advance(86_400 * 30)
    assert never.lookup_and_remember("s", tokens) == 1920


def test_ttl_from_flag_or_environment() -> None:
    assert parse_args([], env={}).cache_ttl_seconds == 600
    assert parse_args([], env={"OFFLINE_OPENAI_CACHE_TTL_SECONDS": "300"}).cache_ttl_seconds == 300
    assert parse_args(["--cache-ttl-seconds", "0"], env={}).cache_ttl_seconds == 0
    with pytest.raises(SystemExit):
        parse_args(["--cache-ttl-seconds", "-1"], env={})
