"""Fixtures shared by every folder: a real PostgreSQL and the offline OpenAI-compatible
server. What tests import (starters, fakes, polling) lives in tests/helpers.

Markers, by folder (``make test-fast`` runs the unit set):
- ``unit``: domain code, data files and in-process fakes; no service, no database;
- ``integration``: services over real gRPC, PostgreSQL, the offline server;
- ``faults``: failures injected into a running suite (upstream faults, killed processes,
  a restarted database);
- ``slow``: a whole benchmark or process suite, tens of seconds each.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.common.logs import setup_logging
from tests.helpers.services import fresh_database

REPO_ROOT = Path(__file__).resolve().parents[1]

setup_logging("tests", os.environ.get("COACH_TEST_LOG_LEVEL", "WARNING"))

# Folders (or files) and their markers; the first match wins, the default is integration.
MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bench/test_bench_smoke.py", ("integration", "slow")),
    ("bench/", ("integration",)),
    ("common/test_db_pool.py", ("integration",)),
    ("common/", ("unit",)),
    ("seams/", ("unit",)),
    ("router/", ("unit",)),
    ("llm/test_resilience.py", ("unit",)),
    ("llm/test_tools_and_persona.py", ("unit",)),
    ("llm/test_faults.py", ("integration", "faults")),
    ("threads/test_threads_domain.py", ("unit",)),
    ("threads/test_prompt_prefix.py", ("unit",)),
    ("suite/test_start_races.py", ("unit",)),
    ("suite/test_supervisor.py", ("integration", "slow")),
    ("suite/test_replicas_config.py", ("unit",)),
    ("replicas/test_replicas_processes.py", ("integration", "faults", "slow")),
    ("faults/test_upstream_faults.py", ("integration", "faults")),
    ("faults/", ("integration", "faults", "slow")),
    ("hardening/test_metrics.py", ("integration", "slow")),
    ("offline_openai/test_faults_and_load.py", ("integration", "faults")),
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        where = item.path.relative_to(tests_dir).as_posix()
        names = next((marks for prefix, marks in MARKERS if where.startswith(prefix)),
                     ("integration",))
        for name in names:
            item.add_marker(name)


def _embedded_pg_url() -> str:
    import pgserver

    from services.suite.postgres import ensure_system_user

    ensure_system_user()  # pgserver's own useradd races with any other server starting
    data = REPO_ROOT / ".coach" / "test-pg"
    data.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data, cleanup_mode="stop")
    return str(server.get_uri())


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A PostgreSQL server: $DATABASE_URL, else an embedded one under .coach/."""
    return os.environ.get("DATABASE_URL") or _embedded_pg_url()


@pytest.fixture(scope="session")
async def pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh database for this test session, dropped at the end."""
    async with fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
async def offline_openai() -> AsyncIterator[Any]:
    """The built-in offline OpenAI-compatible server on a free port."""
    from services.offline_openai import start_offline_openai

    server = await start_offline_openai(host="127.0.0.1", port=0)
    yield server
    await server.close()
