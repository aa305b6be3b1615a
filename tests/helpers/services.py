"""Starting the services in-process for tests: any of the four on a free port, a fresh
database for them, the llm service in front of an upstream.

Each service package exposes ``config.Settings.from_env(env)`` and
``app.create_server(settings) -> CoachServer``; ``start_service`` builds the
environment, starts the server on ``127.0.0.1:0`` and hands it back; ``stop_service``
drains it.
"""

from __future__ import annotations

import importlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from coach.llm.v1 import llm_service_pb2_grpc


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


def with_database(url: str, database: str) -> str:
    """Swaps the database name in a postgresql:// URL (query string kept)."""
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}{sep}{query}"


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
        yield with_database(admin_url, name)
    finally:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@dataclass
class Llm:
    service: RunningService
    stub: llm_service_pb2_grpc.LlmServiceStub
    channel: grpc.aio.Channel


def llm_env(upstream: Any, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "test",
        "COACH_SHUTDOWN_GRACE_SECONDS": "0.5",
        **extra,
    }


@asynccontextmanager
async def running_llm(upstream: Any, env: Mapping[str, str] | None = None) -> AsyncIterator[Llm]:
    """The llm service in front of ``upstream`` (an offline server), with a stub on it."""
    service = await start_service("llm", {**llm_env(upstream), **(env or {})})
    channel = grpc.aio.insecure_channel(service.address)
    try:
        yield Llm(service, llm_service_pb2_grpc.LlmServiceStub(channel), channel)
    finally:
        await channel.close()
        await stop_service(service, grace=0.5)
