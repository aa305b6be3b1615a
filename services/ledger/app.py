"""Wiring: settings -> price book, pool, migrations -> recorder, reports, limits -> server."""

from __future__ import annotations

import logging

from coach.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc

from services.common.db import create_pool
from services.common.pricing import PriceBook
from services.common.server import CoachServer, Registration
from services.ledger.accounting import AnswerRecorder, BaselinePolicy
from services.ledger.config import Settings
from services.ledger.limits import DailyLimits
from services.ledger.reports import SpendReports
from services.ledger.repository import LedgerRepository
from services.ledger.servicer import LedgerServicer

log = logging.getLogger(__name__)


async def create_server(settings: Settings) -> CoachServer:
    # Prices first: a bad price file or baseline model stops start-up before any I/O.
    book = PriceBook.load(settings.prices_file)
    book.require([settings.baseline_model])
    pool = await create_pool(settings.database_url)
    try:
        repository = LedgerRepository(pool)
        await repository.migrate()
    except BaseException:
        await pool.close()
        raise
    baseline = BaselinePolicy(settings.baseline_model, settings.baseline_output_tokens)
    servicer = LedgerServicer(
        recorder=AnswerRecorder(repository, book, baseline),
        reports=SpendReports(repository, settings.baseline_model),
        limits=DailyLimits(repository, settings.user_daily_budget_nanos),
    )
    log.info("ledger ready", extra={"priced_models": len(book.prices),
                                    "baseline_model": settings.baseline_model,
                                    "daily_budget_usd_nanos": settings.user_daily_budget_nanos})

    async def close_pool() -> None:
        await pool.close()

    name = ledger_service_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name
    return CoachServer(
        settings.server,
        [Registration(ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server, servicer, name)],
        on_stop=[close_pool],
    )
