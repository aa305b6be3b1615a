"""Router settings, parsed once from the environment.

| variable | meaning | default |
|---|---|---|
| COACH_ROUTER_LISTEN / COACH_ROUTER_ADDR | where it listens | 127.0.0.1:50051 |
| COACH_THREADS_ADDR, COACH_LLM_ADDR, COACH_LEDGER_ADDR | peers | contract ports |
| COACH_POLICY | `optimized` or `baseline` (everything on the strong stateful tier: docs/glossary.md) | optimized |
| COACH_ONBOARDING_MESSAGES | first N messages of a user on the stateful tier | 3 |
| COACH_RECENT_TURNS | turns read for context | 6 |
| COACH_USER_DAILY_MESSAGES | messages per user per UTC day | unlimited |
| COACH_USER_DAILY_BUDGET_USD | spend per user per UTC day (checked with the ledger) | unlimited |
| COACH_CHAT_DEADLINE_SECONDS | deadline when the caller sets none | 20 |
| COACH_ROUTER_DATA_DIR | folder with classifier/patterns/tiers YAML | services/router/data |
| COACH_ROUTER_JOURNAL_DIR | the write-behind journal of answers (one router per folder); `{hostname}` in it is this host's name, and makes the router adopt the journals of routers gone from sibling folders (replicas sharing one volume) | $COACH_DATA_DIR/router-journal |
| COACH_ROUTER_JOURNAL_FSYNC | fsync every journaled answer (survives power loss, slower) | false |
| COACH_ROUTER_JOURNAL_LINGER_MS | how long a journal batch may wait to fill before it is sent (larger batches: less CPU per stored answer; answers reach threads and the ledger that much later) | 250 |
| COACH_ROUTER_USER_CACHE_SIZE | users whose state the router caches; 0 turns the cache off | 100000 |
| COACH_ROUTER_REQUEST_CLAIMS | claim each caller-given request id in threads before deciding, so a retry on any router replica gets the first answer (false only for a single router: saves one threads call per cached message) | true |
| COACH_ROUTER_CLAIM_MARGIN_SECONDS | how long a claim outlives the caller's deadline (then a dead router's claim is taken over) | 30 |
"""

from __future__ import annotations

import socket
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
from services.common.settings import data_dir as coach_data_dir


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
    journal_dir: Path
    journal_adopt_siblings: bool
    journal_fsync: bool
    journal_linger_s: float
    user_cache_size: int
    request_claims: bool = True
    claim_margin_s: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        data_dir = env.optional("COACH_ROUTER_DATA_DIR")
        budget = env.float("COACH_USER_DAILY_BUDGET_USD", 0.0)
        journal = env.str("COACH_ROUTER_JOURNAL_DIR", str(coach_data_dir(env) / "router-journal"))
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
            journal_dir=Path(journal.replace("{hostname}", socket.gethostname())).resolve(),
            journal_adopt_siblings="{hostname}" in journal,
            journal_fsync=env.bool("COACH_ROUTER_JOURNAL_FSYNC", False),
            journal_linger_s=(env.float("COACH_ROUTER_JOURNAL_LINGER_MS", 250.0, minimum=0.0)
                              or 0.0) / 1000,
            user_cache_size=env.int("COACH_ROUTER_USER_CACHE_SIZE", 100_000, minimum=0) or 0,
            request_claims=env.bool("COACH_ROUTER_REQUEST_CLAIMS", True),
            claim_margin_s=env.float("COACH_ROUTER_CLAIM_MARGIN_SECONDS", 30.0, minimum=1.0)
            or 30.0,
        )
