"""Settings of the offline OpenAI server, parsed once and frozen."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LATENCY_ENV = "OFFLINE_OPENAI_LATENCY_MS"
CACHE_TTL_ENV = "OFFLINE_OPENAI_CACHE_TTL_SECONDS"
PROMPT_CACHE_ENV = "OFFLINE_OPENAI_PROMPT_CACHE"  # "on" (default) or "off"
DEFAULT_CACHE_TTL_SECONDS = 600.0
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50090


@dataclass(frozen=True, slots=True)
class OfflineConfig:
    host: str = DEFAULT_HOST
    port: int = 0
    latency_ms: int = 0  # baseline delay of every model call (chat, responses, run steps)
    poll_after_ms: int = 25  # `openai-poll-after-ms` hint on run retrievals
    # Idle seconds after which a cached prompt prefix expires (0 = never).
    cache_ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS
    # False: no prompt is ever cached (an upstream, or a baseline, without prompt caching).
    prompt_cache: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")
        if self.poll_after_ms < 0:
            raise ValueError(f"poll_after_ms must be >= 0, got {self.poll_after_ms}")
        if self.cache_ttl_seconds < 0:
            raise ValueError(f"cache_ttl_seconds must be >= 0, got {self.cache_ttl_seconds}")


def _env_latency(env: Mapping[str, str]) -> int:
    raw = env.get(LATENCY_ENV, "").strip()
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{LATENCY_ENV} must be an integer number of milliseconds, got {raw!r}")


def _env_cache_ttl(env: Mapping[str, str]) -> float:
    raw = env.get(CACHE_TTL_ENV, "").strip()
    if not raw:
        return DEFAULT_CACHE_TTL_SECONDS
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{CACHE_TTL_ENV} must be a number of seconds, got {raw!r}")


def _env_prompt_cache(env: Mapping[str, str]) -> bool:
    raw = env.get(PROMPT_CACHE_ENV, "").strip().lower() or "on"
    if raw not in ("on", "off"):
        raise SystemExit(f"{PROMPT_CACHE_ENV} must be on or off, got {raw!r}")
    return raw == "on"


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> OfflineConfig:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m services.offline_openai",
        description="Built-in offline OpenAI-compatible HTTP server (base URL /v1).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=None,
        help=f"baseline latency of model calls (default: ${LATENCY_ENV} or 0)",
    )
    parser.add_argument("--poll-after-ms", type=int, default=25)
    parser.add_argument(
        "--cache-ttl-seconds",
        type=float,
        default=None,
        help="idle seconds after which a cached prompt prefix expires, 0 = never "
        f"(default: ${CACHE_TTL_ENV} or {DEFAULT_CACHE_TTL_SECONDS:g})",
    )
    parser.add_argument("--no-prompt-cache", action="store_true",
                        help=f"never cache a prompt (default: ${PROMPT_CACHE_ENV} or on)")
    args = parser.parse_args(argv)
    latency = args.latency_ms if args.latency_ms is not None else _env_latency(env)
    ttl = args.cache_ttl_seconds if args.cache_ttl_seconds is not None else _env_cache_ttl(env)
    try:
        return OfflineConfig(args.host, args.port, latency, args.poll_after_ms, ttl,
                             prompt_cache=not args.no_prompt_cache and _env_prompt_cache(env))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
