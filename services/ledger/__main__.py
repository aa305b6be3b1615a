"""Entry point: ``python -m services.ledger``."""

from __future__ import annotations

from services.common.server import run_service
from services.ledger.app import create_server
from services.ledger.config import Settings

if __name__ == "__main__":
    run_service("ledger", Settings.from_env, create_server)
