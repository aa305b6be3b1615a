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
from services.threads.folding import FoldSettings
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
# Cache-aware rotation (docs/cost.md), opt-in: with COACH_PRUNE_CACHE_COLD_SECONDS > 0 a full
# window rotates only on the first message after that much inactivity (the user's cached
# prefix is cold anyway: match the stateful tier's prompt_cache_retention, 86400 for 24h),
# or past COACH_PRUNE_CEILING_MESSAGES. Off by default because the whole suite says so:
# make bench (cost phase, 24h retention on both policies) costs the optimized policy
# $1.152 per 1,000 messages with the window rule and $1.484 with cold-or-200 (40.1% vs
# 51.6% of the caching baseline). The offline replay of stateful turns alone
# (bench/cache_breakeven.py) favoured cold-or-200 (2.44 vs 3.94 per 1,000 turns), but it
# keeps one model per conversation; in the suite a conversation's turns alternate between
# gpt-5.4 and gpt-5.5 (caches are per model), and threads runs on real time while the
# bench's upstream runs simulated time, so the cold rule never fires there.
DEFAULT_CACHE_COLD_SECONDS = 0
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
    # Folding messages that left the window into the summary after the reply, at the llm's
    # background service tier (COACH_FOLD_AFTER_REPLY, COACH_FOLD_MIN_MESSAGES).
    fold: FoldSettings
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
        prune_at = (env.int("COACH_PRUNE_AT_MESSAGES", keep + PRUNE_SLACK_MESSAGES, minimum=4)
                    or keep + PRUNE_SLACK_MESSAGES)
        server = server_settings(env, "threads")
        max_bytes = env.int("COACH_THREADS_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES,
                            minimum=64 * 1024) or DEFAULT_MAX_MESSAGE_BYTES
        # The relay's first pause after a failed pass is one interval.
        relay_interval = env.float("COACH_THREADS_RELAY_INTERVAL_SECONDS", 0.1, minimum=0.001)
        cache_cold_s = env.float("COACH_PRUNE_CACHE_COLD_SECONDS", DEFAULT_CACHE_COLD_SECONDS,
                                 minimum=0)
        fold_enabled = env.bool("COACH_FOLD_AFTER_REPLY", True)
        # Rotating ahead needs the fold (it rotates once the summary is folded up to the
        # window) and the window rule (the cold rule waits for the next turn's idle time).
        rotate_ahead = env.bool("COACH_ROTATE_AHEAD", True) and fold_enabled and not cache_cold_s
        # A fold (and, rotating ahead, the rotation after it) once this many messages have left
        # the window. Without rotating ahead: as many as a rotation would fold, so one
        # Summarize call per rotation. Rotating ahead: twice that, since each fold then brings
        # a rotation (a new conversation, the old one deleted): at 4, the open loop's steady
        # state (one replica, 2026-12-07) rotated for nearly every stateful turn and held
        # nothing at 90 messages/s (p99 720 ms); at 8, 100/s held (p99 481-510 ms) with a third
        # fewer rotations. The bench's cost phase priced that at 54.0% of the caching baseline
        # against 53.5% at 4 and 52.7% rotating on the turn's path (docs/cost.md).
        fold_default = (prune_at - keep) * (2 if rotate_ahead else 1)
        fold_min = env.int("COACH_FOLD_MIN_MESSAGES", fold_default, minimum=1) or fold_default
        return cls(
            server=dataclasses.replace(
                server, max_message_bytes=max(server.max_message_bytes, max_bytes)),
            database_url=database_url(env),
            llm=peer_settings(env, "llm"),
            ledger=peer_settings(env, "ledger"),
            stateful_api=env.choice("COACH_STATEFUL_API", "responses", STATEFUL_APIS),
            prune=PruneSettings(
                keep_messages=keep,
                prune_at_messages=prune_at,
                summary_batch=env.int("COACH_SUMMARY_BATCH_MESSAGES", 100, minimum=1) or 100,
                cache_cold_after_s=cache_cold_s,
                ceiling_messages=env.int("COACH_PRUNE_CEILING_MESSAGES",
                                         DEFAULT_CEILING_MESSAGES, minimum=0) or 0,
                rotate_ahead=rotate_ahead,
            ),
            # On by default: a fold's charge is owed by the user's next answer, reserved by
            # that answer's claim (BeginAnswer) and reported in its reply, so the ledger bills
            # what the replies said. (A router run without claims, one replica only, has an
            # answer journaled after its reply take what was owed: reported by no reply.)
            fold=FoldSettings(
                enabled=fold_enabled,
                min_messages=fold_min,
                max_in_flight=env.int("COACH_FOLD_MAX_IN_FLIGHT", FoldSettings.max_in_flight,
                                      minimum=1) or FoldSettings.max_in_flight,
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
                max_in_flight=env.int("COACH_THREADS_RETIRE_IN_FLIGHT", RetireSettings.max_in_flight,
                                      minimum=1) or RetireSettings.max_in_flight,
            ),
            flush_seconds=env.float("COACH_THREADS_FLUSH_SECONDS", 5.0),
            llm_timeout_s=env.float("COACH_THREADS_LLM_TIMEOUT_SECONDS", 60.0, minimum=0.1),
            ledger_timeout_s=env.float("COACH_THREADS_LEDGER_TIMEOUT_SECONDS", 5.0, minimum=0.1),
            db_pool_size=env.int("COACH_THREADS_DB_POOL_SIZE", 20, minimum=2) or 20,
            turn_budget_s=env.float("COACH_THREADS_TURN_BUDGET_SECONDS", 120.0, minimum=1.0),
            baseline_prefix_tokens=env.int("COACH_BASELINE_PREFIX_TOKENS", None, minimum=0),
        )
