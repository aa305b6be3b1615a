"""Entry point: ``python -m services.threads``."""

from __future__ import annotations

from services.common.server import run_service
from services.threads.app import create_server
from services.threads.config import Settings

if __name__ == "__main__":
    run_service("threads", Settings.from_env, create_server)
