"""Fixtures: the whole suite in-process for the hardening tests, with stubs for every service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers.suite import MAX_MESSAGE_BYTES, Stubs, Suite, start_suite, stop_suite, stubs_for


@pytest.fixture(scope="module")
async def hardened(pg_url: str, offline_openai: Any) -> AsyncIterator[tuple[Suite, Stubs]]:
    """The suite with a deliberately set maximum request size (COACH_MAX_MESSAGE_BYTES)."""
    suite = await start_suite(pg_url, offline_openai,
                              {"COACH_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES)})
    stubs = stubs_for(suite)
    yield suite, stubs
    await stubs.close()
    await stop_suite(suite)
