"""Entry point: ``python -m services.llm``."""

from __future__ import annotations

from services.common.server import run_service
from services.llm.app import create_server
from services.llm.config import Settings

if __name__ == "__main__":
    run_service("llm", Settings.from_env, create_server)
