"""PostgreSQL through asyncpg: one pool per process and numbered migrations.

Migrations are plain ``NNN_name.sql`` files in a service's ``migrations/``
folder, applied in order inside one transaction each and recorded in
``schema_migrations``; an advisory lock makes concurrent start-ups safe.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import asyncpg

from services.common.errors import ConfigError

log = logging.getLogger("coach.db")

_MIGRATION = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x636F616368  # "coach"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection given back, beyond what asyncpg always does (roll
    back a transaction left open, drop listeners): nothing. asyncpg's default also sends
    ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every release, a round
    trip to PostgreSQL per borrowed connection, to undo session state that pooled
    connections here never create: locks are transaction-scoped
    (``pg_advisory_xact_lock``), settings are ``set_config(..., true)`` (this transaction
    only), no cursor outlives its transaction, and LISTEN has a connection of its own."""


async def create_pool(
    url: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    wait_seconds: float = 30.0,
) -> asyncpg.Pool:
    """Opens the pool, waiting up to ``wait_seconds`` for the database to accept connections."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.1
    while True:
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                command_timeout=10,
                max_inactive_connection_lifetime=60,
                reset=_keep_session,
            )
            assert pool is not None
            return pool
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("database not ready", extra={"error": repr(exc), "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def migration_files(directory: Path) -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if not match:
            raise ConfigError(f"migration {path} is not named NNN_name.sql")
        found.append((int(match.group(1)), match.group(2), path))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"duplicate migration numbers in {directory}")
    return found


async def apply_migrations(pool: asyncpg.Pool, service: str, directory: Path) -> list[int]:
    """Applies the service's pending migrations; returns the versions applied."""
    applied_now: list[int] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                       service    text NOT NULL,
                       version    integer NOT NULL,
                       name       text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (service, version))"""
        )
        done = {
            r["version"]
            for r in await conn.fetch(
                "SELECT version FROM schema_migrations WHERE service = $1", service
            )
        }
        for version, name, path in migration_files(directory):
            if version in done:
                continue
            await conn.execute(path.read_text())
            await conn.execute(
                "INSERT INTO schema_migrations (service, version, name) VALUES ($1, $2, $3)",
                service, version, name,
            )
            applied_now.append(version)
    if applied_now:
        log.info("migrations applied", extra={"db_service": service, "versions": applied_now})
    return applied_now
