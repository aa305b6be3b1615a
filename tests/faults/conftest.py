"""Fault tests: the suite in-process against an offline upstream of its own (faults on it
affect nobody else), with short deadlines, retries and breaker cool-down."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.offline_openai import start_offline_openai
from tests.e2e.conftest import Suite, start_suite, stop_suite

BREAKER_COOLDOWN_S = 2.0
FAULT_ENV = {
    "COACH_ONBOARDING_MESSAGES": "0",  # route by the message from the first one on
    "COACH_BREAKER_FAILURES": "3",
    "COACH_BREAKER_COOLDOWN_SECONDS": str(BREAKER_COOLDOWN_S),
    "COACH_RETRY_BASE_SECONDS": "0.05",
    "COACH_RETRY_MAX_SECONDS": "0.3",
}


@pytest.fixture(scope="module")
async def faulty(pg_url: str) -> AsyncIterator[Suite]:
    upstream = await start_offline_openai(host="127.0.0.1", port=0)
    suite = await start_suite(pg_url, upstream, FAULT_ENV)
    yield suite
    upstream.faults.clear()
    await stop_suite(suite)
    await upstream.close()
