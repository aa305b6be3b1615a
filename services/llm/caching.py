"""Prompt-cache levers per tier (``data/caching.yaml``): the retention each tier asks for,
the ``prompt_cache_key`` of a stateful turn (one per user), and the service tier of calls
nobody waits on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from services.common.datafiles import load_mapping
from services.common.errors import ConfigError

RETENTIONS = ("in_memory", "24h")
TIERS = ("cheap", "stateful", "summary")
SERVICE_TIERS = ("default", "flex")
SERVICE_TIER_CALLS = ("background",)


@dataclass(frozen=True)
class CachePolicy:
    retention: dict[str, str] = field(default_factory=dict)  # tier -> retention
    models: tuple[str, ...] = ()
    service_tier: dict[str, str] = field(default_factory=dict)  # kind of call -> tier
    # Every stateful turn carries every tool and the tool guidance, and picks the type's
    # tools with tool_choice (allowed_tools, or none): one byte-stable prefix per user.
    stable_tools: bool = False

    def service_tier_for(self, call: str, model: str) -> str | None:
        """The service_tier to request for this kind of call, or None (the default)."""
        if not model.startswith(self.models):
            return None
        tier = self.service_tier.get(call)
        return tier if tier and tier != "default" else None

    def retention_for(self, tier: str, model: str) -> str | None:
        """The prompt_cache_retention to send, or None (model does not take it, or unset)."""
        if not model.startswith(self.models):
            return None
        return self.retention.get(tier)


def user_cache_key(tier: str, prefix: str, user_id: str) -> str:
    """One key per user and stable prefix: a user's requests share the cached conversation
    prefix (the user id is hashed, never sent)."""
    prefix_hash = hashlib.sha256(prefix.encode("utf-8")).hexdigest()[:8]
    user_hash = hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:16]
    return f"coach-{tier}-{prefix_hash}-{user_hash}"


def load_caching(path: Path) -> CachePolicy:
    data = load_mapping(path, "caching", "models and retention")
    models = data.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{path}: models must be a list of model name prefixes")
    raw = data.get("retention") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: retention must map {', '.join(TIERS)} to a retention")
    retention: dict[str, str] = {}
    for tier, value in raw.items():
        if tier not in TIERS:
            raise ConfigError(f"{path}: retention.{tier} is not a tier ({', '.join(TIERS)})")
        if value not in RETENTIONS:
            raise ConfigError(f"{path}: retention.{tier} must be one of "
                              f"{', '.join(RETENTIONS)}, not {value!r}")
        retention[str(tier)] = str(value)
    raw_tiers = data.get("service_tier") or {}
    if not isinstance(raw_tiers, dict):
        raise ConfigError(f"{path}: service_tier must map {', '.join(SERVICE_TIER_CALLS)} to a "
                          "service tier")
    service_tier: dict[str, str] = {}
    for call, value in raw_tiers.items():
        if call not in SERVICE_TIER_CALLS:
            raise ConfigError(f"{path}: service_tier.{call} is not a kind of call "
                              f"({', '.join(SERVICE_TIER_CALLS)})")
        if value not in SERVICE_TIERS:
            raise ConfigError(f"{path}: service_tier.{call} must be one of "
                              f"{', '.join(SERVICE_TIERS)}, not {value!r}")
        service_tier[str(call)] = str(value)
    stable = data.get("stable_tools", False)
    if not isinstance(stable, bool):
        raise ConfigError(f"{path}: stable_tools must be true or false, not {stable!r}")
    return CachePolicy(retention=retention, models=tuple(models), service_tier=service_tier,
                       stable_tools=stable)
