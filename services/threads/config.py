"""Settings of the threads service, parsed once from the environment.

`COACH_THREADS_MAX_MESSAGE_BYTES`: the largest request accepted (RecordExchanges
batches from the routers' journals), 8 MiB by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.settings import (
    Env,
    PeerSettings,
    ServerSettings,
    database_url,
    peer_settings,
    server_settings,
)
from services.threads.ledger_relay import RelaySettings
from services.threads.pruning import PruneSettings
from services.threads.retirer import RetireSettings

STATEFUL_APIS = ("responses", "assistants")
# A router's RecordExchanges batch (up to 2 MiB by the router's own cut) is well above
# the suite's 64 KiB default for small requests.
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
DEFAULT_SUMMARY_MODEL = "gpt-5.4-mini"
# The provider conversation keeps the last N=20 messages verbatim after the running
# summary, and rotates once it would hold N + 4: a rotation (one Summarize call on the
# cheap model for the 4 messages leaving the window, a new conversation seeded with
# summary + the last N) every second exchange, so a stateful turn never resends more than
# 4 messages beyond the window. A smaller slack pays for more summaries than the shorter
# context saves, a larger one for more context than the rarer summaries save; the
# measurements are in docs/decisions.md.
DEFAULT_KEEP_MESSAGES = 20
PRUNE_SLACK_MESSAGES = 4
# Cache-aware rotation (docs/cost.md): a full window rotates only when the user's cached
# prefix is cold anyway, i.e. the first message after the stateful tier's
# prompt_cache_retention (24h in the llm's data/caching.yaml), or at a hard ceiling of
# messages held. Measured (bench/cache_breakeven.py, the bench workload through the offline
# token model, gpt-5.5, 24h retention, 100 messages per user per month; $ per 1,000 stateful
# turns): rotating every 4 messages 3.94; cold-or-ceiling 40: 4.63, 60: 3.49, 100: 2.69,
# 200: 2.44, 400: 2.56 (300 a month: 3.94 / 2.36 at 200). Short ceilings keep prompts under
# the 1,024-token caching minimum; past ~200 the cached tail costs more than a rotation.
# Set COACH_PRUNE_CACHE_COLD_SECONDS=0 for the old rule.
DEFAULT_CACHE_COLD_SECONDS = 24 * 3600
DEFAULT_CEILING_MESSAGES = 200


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    database_url: str
    llm: PeerSettings
    ledger: PeerSettings
    # Which stateful API new provider conversations use.
    stateful_api: str
    prune: PruneSettings
    summary_model: str
    relay: RelaySettings
    # Deleting rotated and orphaned provider conversations upstream
    # (COACH_DELETE_ROTATED_CONVERSATIONS, COACH_THREADS_ORPHAN_GRACE_SECONDS).
    retire: RetireSettings
    # Seconds the relay keeps flushing at shutdown.
    flush_seconds: float
    llm_timeout_s: float
    ledger_timeout_s: float
    # The one pool: every query is a short statement (a stateful turn holds no
    # connection across its upstream calls; a lease row serializes a user's turns).
    # COACH_THREADS_TURN_CONNECTIONS (the former pool of connections held for whole
    # turns) is deprecated and ignored.
    db_pool_size: int
    # A stateful turn's time budget when the caller set no deadline (else the deadline,
    # capped by this). The user's turn lease lasts this long plus a margin, so a crashed
    # replica's lease expires by itself.
    turn_budget_s: float
    # Persona + every function definition, in tokens, for baseline estimates
    # (COACH_BASELINE_PREFIX_TOKENS); None: as the llm service reports it (prompt_prefix.py).
    baseline_prefix_tokens: int | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        keep = (env.int("COACH_PRUNE_KEEP_MESSAGES", DEFAULT_KEEP_MESSAGES, minimum=2)
                or DEFAULT_KEEP_MESSAGES)
        server = server_settings(env, "threads")
        max_bytes = env.int("COACH_THREADS_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES,
                            minimum=64 * 1024) or DEFAULT_MAX_MESSAGE_BYTES
        # The relay's first pause after a failed pass is one interval.
        relay_interval = env.float("COACH_THREADS_RELAY_INTERVAL_SECONDS", 0.1, minimum=0.001)
        return cls(
            server=dataclasses.replace(
                server, max_message_bytes=max(server.max_message_bytes, max_bytes)),
            database_url=database_url(env),
            llm=peer_settings(env, "llm"),
            ledger=peer_settings(env, "ledger"),
            stateful_api=env.choice("COACH_STATEFUL_API", "responses", STATEFUL_APIS),
            prune=PruneSettings(
                keep_messages=keep,
                prune_at_messages=(env.int("COACH_PRUNE_AT_MESSAGES", keep + PRUNE_SLACK_MESSAGES,
                                           minimum=4) or keep + PRUNE_SLACK_MESSAGES),
                summary_batch=env.int("COACH_SUMMARY_BATCH_MESSAGES", 100, minimum=1) or 100,
                cache_cold_after_s=env.float("COACH_PRUNE_CACHE_COLD_SECONDS",
                                             DEFAULT_CACHE_COLD_SECONDS, minimum=0),
                ceiling_messages=env.int("COACH_PRUNE_CEILING_MESSAGES",
                                         DEFAULT_CEILING_MESSAGES, minimum=0) or 0,
            ),
            summary_model=env.str("COACH_SUMMARY_MODEL", DEFAULT_SUMMARY_MODEL),
            relay=RelaySettings(
                batch_size=env.int("COACH_THREADS_RELAY_BATCH", 200, minimum=1) or 200,
                interval_s=relay_interval,
                backoff_s=relay_interval,
                linger_s=env.float("COACH_THREADS_RELAY_LINGER_SECONDS", 0.05),
                max_backoff_s=env.float("COACH_THREADS_RELAY_MAX_BACKOFF_SECONDS", 5.0,
                                        minimum=0.01),
            ),
            retire=RetireSettings(
                enabled=env.bool("COACH_DELETE_ROTATED_CONVERSATIONS", True),
                interval_s=env.float("COACH_THREADS_RETIRE_INTERVAL_SECONDS", 30.0, minimum=0.01),
                orphan_grace_s=env.float("COACH_THREADS_ORPHAN_GRACE_SECONDS", 3600.0, minimum=0.0),
            ),
            flush_seconds=env.float("COACH_THREADS_FLUSH_SECONDS", 5.0),
            llm_timeout_s=env.float("COACH_THREADS_LLM_TIMEOUT_SECONDS", 60.0, minimum=0.1),
            ledger_timeout_s=env.float("COACH_THREADS_LEDGER_TIMEOUT_SECONDS", 5.0, minimum=0.1),
            db_pool_size=env.int("COACH_THREADS_DB_POOL_SIZE", 20, minimum=2) or 20,
            turn_budget_s=env.float("COACH_THREADS_TURN_BUDGET_SECONDS", 120.0, minimum=1.0),
            baseline_prefix_tokens=env.int("COACH_BASELINE_PREFIX_TOKENS", None, minimum=0),
        )
