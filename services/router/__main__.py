"""Entry point: ``python -m services.router``."""

from __future__ import annotations

from services.common.logs import setup_logging
from services.common.metrics import serve_metrics
from services.common.server import run
from services.router.app import create_server
from services.router.config import Settings


async def main() -> None:
    settings = Settings.from_env()
    setup_logging("router", settings.server.log_level)
    serve_metrics(settings.server.metrics_port)
    server = await create_server(settings)
    await server.start()
    await server.serve_until_signal()


if __name__ == "__main__":
    run(main)
