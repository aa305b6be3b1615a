"""A stand-in for one of the four services, for supervisor tests that must not wait for them.

``python -m tests.suite.standin_service NAME`` serves only grpc.health.v1 (through the same
CoachServer the real services use) on COACH_<NAME>_LISTEN/ADDR, drains on SIGTERM, and
writes the environment the supervisor gave it to $COACH_DATA_DIR/standin-NAME.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from services.common.server import CoachServer
from services.common.settings import Env, data_dir, server_settings


async def serve(name: str) -> None:
    env = Env()
    settings = server_settings(env, name)
    server = CoachServer(settings, [])
    await server.start()
    keys = ("DATABASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY", "COACH_DATA_DIR", "COACH_POLICY",
            *(f"COACH_{peer}_ADDR" for peer in ("ROUTER", "LLM", "THREADS", "LEDGER")))
    seen = {key: os.environ.get(key) for key in keys}
    (data_dir(env) / f"standin-{name}.json").write_text(json.dumps({"pid": os.getpid(), **seen}))
    await server.serve_until_signal()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
