"""Shared fixtures: a real PostgreSQL, the offline OpenAI-compatible server, and
helpers that start any of the four services in-process on a free port.

Each service package exposes ``config.Settings.from_env(env)`` and
``app.create_server(settings) -> CoachServer``; ``start_service`` builds the
environment, starts the server on ``127.0.0.1:0`` and stops it afterwards.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.common.logs import setup_logging

REPO_ROOT = Path(__file__).resolve().parents[1]

setup_logging("tests", os.environ.get("COACH_TEST_LOG_LEVEL", "WARNING"))


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


@asynccontextmanager
async def fresh_database(admin_url: str, prefix: str = "coach_test") -> AsyncIterator[str]:
    """A new, empty database on the server, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield _with_database(admin_url, name)
    finally:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
async def pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh database for this test session, dropped at the end."""
    async with fresh_database(pg_admin_url) as url:
        yield url


def _with_database(url: str, database: str) -> str:
    """Swaps the database name in a postgresql:// URL (query string kept)."""
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}{sep}{query}"


@pytest.fixture(scope="session")
async def offline_openai() -> AsyncIterator[Any]:
    """The built-in offline OpenAI-compatible server on a free port."""
    from services.offline_openai import start_offline_openai

    server = await start_offline_openai(host="127.0.0.1", port=0)
    yield server
    await server.close()


class RunningService:
    def __init__(self, name: str, server: Any) -> None:
        self.name = name
        self.server = server
        self.address = f"127.0.0.1:{server.port}"


async def start_service(name: str, env: Mapping[str, str]) -> RunningService:
    """Starts ``services.<name>`` in-process on a free port with ``env`` as its environment."""
    config = importlib.import_module(f"services.{name}.config")
    app = importlib.import_module(f"services.{name}.app")
    full_env = {f"COACH_{name.upper()}_LISTEN": "127.0.0.1:0",
                f"COACH_{name.upper()}_METRICS_PORT": "0",
                # Each router journals into a folder of its own (one router per folder).
                "COACH_ROUTER_JOURNAL_DIR": tempfile.mkdtemp(prefix="coach-journal-"), **env}
    settings = config.Settings.from_env(full_env)
    server = await app.create_server(settings)
    await server.start()
    return RunningService(name, server)


async def stop_service(service: RunningService, grace: float = 1.0) -> None:
    await service.server.stop(grace)
