"""The offline server as an object: start it in-process, read its port, set faults, close."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

from aiohttp import web

from .api import OfflineApi
from .caching import PromptCache
from .clock import SimClock
from .config import DEFAULT_CACHE_TTL_SECONDS, OfflineConfig
from .faults import Faults
from .generation import OfflineModel
from .stats import Stats
from .store import StateStore
from .tokens import TokenCounter, load_encoding

log = logging.getLogger("services.offline_openai")


class OfflineOpenAI:
    """A running offline OpenAI-compatible server."""

    def __init__(self, config: OfflineConfig) -> None:
        self.config = config
        self.faults = Faults()
        self.stats = Stats()
        self.store = StateStore()
        self.tokens = TokenCounter()
        self.clock = SimClock()  # real time until a benchmark sets it (POST /_control/clock)
        self.prompt_cache = PromptCache(ttl_seconds=config.cache_ttl_seconds, clock=self.clock,
                                        enabled=config.prompt_cache)
        self.model = OfflineModel(self.tokens, self.prompt_cache, self.stats)
        self.api = OfflineApi(config, self.store, self.model, self.faults, self.stats, self.clock)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> None:
        # Load the vocabulary off the event loop so a host process keeps serving meanwhile.
        await asyncio.to_thread(load_encoding)
        runner = web.AppRunner(self.api.build(), access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, backlog=4096)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info(
            "offline openai server listening",
            extra={"event": "listening", "base_url": self.base_url,
                   "latency_ms": self.config.latency_ms,
                   "cache_ttl_seconds": self.config.cache_ttl_seconds},
        )

    async def close(self) -> None:
        """Stop serving; requests hung by a fault are released first."""
        if self._runner is None:
            return
        self.api.closing = True
        self.faults.clear()
        runner, self._runner = self._runner, None
        await runner.cleanup()
        log.info("offline openai server stopped", extra={"event": "stopped"})

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_offline_openai(
    host: str = "127.0.0.1",
    port: int = 0,
    latency_ms: int = 0,
    cache_ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS,
) -> OfflineOpenAI:
    """Start the server on host:port (0 = a free port) and return it, already listening."""
    server = OfflineOpenAI(
        OfflineConfig(host=host, port=port, latency_ms=latency_ms,
                      cache_ttl_seconds=cache_ttl_seconds)
    )
    await server.start()
    return server
