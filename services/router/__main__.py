"""Entry point: ``python -m services.router``."""

from __future__ import annotations

from services.common.server import run_service
from services.router.app import create_server
from services.router.config import Settings

if __name__ == "__main__":
    run_service("router", Settings.from_env, create_server)
