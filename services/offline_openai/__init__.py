"""Built-in offline OpenAI-compatible HTTP server.

    server = await start_offline_openai()            # port 0 = any free port
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="offline")
    server.faults.set("error_429", count=2, retry_after_s=3)
    server.stats.snapshot()
    server.clock.set(1_790_000_000)                  # simulated time: cached prompts expire
                                                     # after cache_ttl_seconds idle (600)
    await server.close()
"""

from .clock import SimClock
from .config import OfflineConfig
from .faults import FaultMode, FaultPlan, Faults
from .server import OfflineOpenAI, start_offline_openai
from .stats import Stats

__all__ = [
    "FaultMode",
    "FaultPlan",
    "Faults",
    "OfflineConfig",
    "OfflineOpenAI",
    "SimClock",
    "Stats",
    "start_offline_openai",
]
