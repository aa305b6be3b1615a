"""Router settings, parsed once from the environment.

| variable | meaning | default |
|---|---|---|
| COACH_ROUTER_LISTEN / COACH_ROUTER_ADDR | where it listens | 127.0.0.1:50051 |
| COACH_THREADS_ADDR, COACH_LLM_ADDR, COACH_LEDGER_ADDR | peers | contract ports |
| COACH_POLICY | `optimized` or `baseline` (the guide's BEFORE) | optimized |
| COACH_ONBOARDING_MESSAGES | first N messages of a user on the stateful tier | 3 |
| COACH_RECENT_TURNS | turns read for context | 6 |
| COACH_USER_DAILY_MESSAGES | messages per user per UTC day | unlimited |
| COACH_USER_DAILY_BUDGET_USD | spend per user per UTC day (checked with the ledger) | unlimited |
| COACH_CHAT_DEADLINE_SECONDS | deadline when the caller sets none | 20 |
| COACH_ROUTER_DATA_DIR | folder with classifier/patterns/tiers YAML | services/router/data |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.settings import (
    Env,
    PeerSettings,
    ServerSettings,
    peer_settings,
    server_settings,
)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    threads: PeerSettings
    llm: PeerSettings
    ledger: PeerSettings
    policy: str
    onboarding_messages: int
    recent_turns: int
    daily_messages: int | None
    daily_budget_enabled: bool
    chat_deadline_s: float
    data_dir: Path | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        data_dir = env.optional("COACH_ROUTER_DATA_DIR")
        budget = env.float("COACH_USER_DAILY_BUDGET_USD", 0.0)
        return cls(
            server=server_settings(env, "router"),
            threads=peer_settings(env, "threads"),
            llm=peer_settings(env, "llm"),
            ledger=peer_settings(env, "ledger"),
            policy=env.choice("COACH_POLICY", "optimized", ("optimized", "baseline")),
            onboarding_messages=env.int("COACH_ONBOARDING_MESSAGES", 3, minimum=0) or 0,
            recent_turns=env.int("COACH_RECENT_TURNS", 6, minimum=0) or 0,
            daily_messages=env.int("COACH_USER_DAILY_MESSAGES", None, minimum=1),
            daily_budget_enabled=budget > 0,
            chat_deadline_s=env.float("COACH_CHAT_DEADLINE_SECONDS", 20.0, minimum=0.5),
            data_dir=Path(data_dir) if data_dir else None,
        )
