"""Wiring: settings -> pools, migrations, peers -> history, stateful turns, ledger relay -> server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg
from coach.threads.v1 import threads_service_pb2, threads_service_pb2_grpc

from services.common.clients import open_channel
from services.common.db import apply_migrations, create_pool
from services.common.pricing import PriceBook
from services.common.server import CoachServer, Registration
from services.threads.answer_claims import AnswerClaims
from services.threads.config import Settings
from services.threads.folding import SummaryFolder
from services.threads.history import History
from services.threads.ledger_client import LedgerClient
from services.threads.ledger_relay import LedgerRelay
from services.threads.llm_client import LlmClient
from services.threads.prompt_prefix import BaselinePrefix
from services.threads.repository import ThreadsRepository
from services.threads.retirer import ConversationRetirer
from services.threads.servicer import ThreadsServicer
from services.threads.stateful_turn import StatefulTurns
from services.threads.user_changes import UserChanges

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Claims on request ids are kept an hour (threads.exchanges answers retries after that).
CLAIMS_KEPT_S = 3600.0
CLAIMS_SWEEP_EVERY_S = 60.0


async def create_server(settings: Settings) -> CoachServer:
    PriceBook.load().check_shutdowns([settings.summary_model])  # before any connection opens
    pool = await create_pool(settings.database_url, max_size=settings.db_pool_size)
    try:
        await apply_migrations(pool, "threads", MIGRATIONS)
    except BaseException:
        await pool.close()
        raise
    repository = ThreadsRepository(pool)
    llm_channel = open_channel(settings.llm)
    ledger_channel = open_channel(settings.ledger)
    relay = LedgerRelay(
        repository.outbox, LedgerClient(ledger_channel, timeout_s=settings.ledger_timeout_s),
        settings.relay,
    )
    llm = LlmClient(llm_channel, timeout_s=settings.llm_timeout_s)
    prefix = BaselinePrefix(llm.baseline_prefix_tokens, configured=settings.baseline_prefix_tokens)
    await prefix.start()
    history = History(repository, prefix_tokens=prefix.tokens, on_stored=relay.notify)
    retirer = ConversationRetirer(repository.retired, llm, settings.retire)
    folder = SummaryFolder(repository, llm, prune=settings.prune,
                           summary_model=settings.summary_model, settings=settings.fold,
                           api=settings.stateful_api, on_rotated=retirer.notify)
    turns = StatefulTurns(
        repository,
        history,
        llm,
        api=settings.stateful_api,
        prune=settings.prune,
        summary_model=settings.summary_model,
        turn_budget_s=settings.turn_budget_s,
        on_rotated=retirer.notify,
        on_window_full=folder.soon,
    )
    changes = UserChanges(lambda: asyncpg.connect(settings.database_url))
    claims = AnswerClaims(repository.claims, history)
    sweeper = asyncio.create_task(
        claims.sweep_forever(CLAIMS_KEPT_S, every_s=CLAIMS_SWEEP_EVERY_S), name="claim-sweeper")
    changes.start()
    relay.start()
    retirer.start()
    log.info("threads ready", extra={
        "stateful_api": settings.stateful_api, "llm": settings.llm.address,
        "ledger": settings.ledger.address, "prune_keep_messages": settings.prune.keep_messages,
        "prune_at_messages": settings.prune.prune_at_messages,
        "rotate_ahead": settings.prune.rotate_ahead,
        "summary_model": settings.summary_model, "baseline_prefix_tokens": prefix.tokens(),
        "delete_rotated_conversations": settings.retire.enabled})

    async def end_watches() -> None:
        sweeper.cancel()
        await changes.stop()

    async def finish_turns() -> None:
        await turns.finish(settings.server.grace_seconds)
        await folder.finish(settings.server.grace_seconds)

    async def flush_ledger() -> None:
        await prefix.stop()
        await retirer.stop()
        await relay.stop(settings.flush_seconds)

    async def close() -> None:
        await llm_channel.close()
        await ledger_channel.close()
        await pool.close()

    name = threads_service_pb2.DESCRIPTOR.services_by_name["ThreadsService"].full_name
    return CoachServer(
        settings.server,
        [Registration(threads_service_pb2_grpc.add_ThreadsServiceServicer_to_server,
                      ThreadsServicer(history, turns, changes, claims), name)],
        on_drain=[end_watches, finish_turns],
        on_stop=[flush_ledger, close],
    )
