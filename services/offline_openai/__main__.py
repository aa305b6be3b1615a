"""`python -m services.offline_openai --host 127.0.0.1 --port 50090 [--latency-ms N]
[--cache-ttl-seconds S]`.

Logs JSON lines on stderr: start-up, faults, and with OFFLINE_OPENAI_LOG_LEVEL=DEBUG one
line per request (off by default: a stand-in upstream should cost next to nothing)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from services.common.supervision import follow_supervisor

from .config import OfflineConfig, parse_args
from .server import OfflineOpenAI

# One encoder for every line (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(default=str)
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(data)


def configure_logging(level: str = "INFO") -> None:
    # A line per request: skip what records collect and these lines never show (the
    # caller's file and line, a walk up the stack; thread and process names).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("services.offline_openai").setLevel(level.upper())


async def serve(config: OfflineConfig) -> None:
    server = OfflineOpenAI(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> None:
    follow_supervisor()
    config = parse_args(argv)
    configure_logging(os.environ.get("OFFLINE_OPENAI_LOG_LEVEL", "INFO"))
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
