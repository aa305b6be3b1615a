"""Fixtures: the whole suite in-process (tests.helpers.suite), one per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers.suite import Suite, start_suite, stop_suite


@pytest.fixture(scope="module")
async def suite(pg_url: str, offline_openai: Any) -> AsyncIterator[Suite]:
    running = await start_suite(pg_url, offline_openai)
    yield running
    await stop_suite(running)
