"""Fault tests: the suite in-process against an offline upstream of its own (faults on it
affect nobody else), with short deadlines, retries and breaker cool-down."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.offline_openai import start_offline_openai
from tests.helpers.suite import FAULT_ENV, Suite, start_suite, stop_suite


@pytest.fixture(scope="module")
async def faulty(pg_url: str) -> AsyncIterator[Suite]:
    upstream = await start_offline_openai(host="127.0.0.1", port=0)
    suite = await start_suite(pg_url, upstream, FAULT_ENV)
    yield suite
    upstream.faults.clear()
    await stop_suite(suite)
    await upstream.close()
