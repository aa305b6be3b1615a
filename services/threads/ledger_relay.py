"""Relays the outbox of answer records to the ledger, at least once, counted once.

Every stored exchange wrote its AnswerRecord to ``threads.outbox`` in the same
transaction as its messages. This task sends pending records in batches to
``LedgerService.RecordAnswers`` (idempotent on request_id) and deletes them only
once the ledger acknowledged them; rows are locked FOR UPDATE SKIP LOCKED in a
transaction held across the call, so with several replicas at most one relay
sends a given row at a time. While the ledger is unreachable it backs off
exponentially and the rows wait. On shutdown it flushes what it can in time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from services.common.metrics import LEDGER_BACKLOG
from services.common.repeated_pass import PassSettings, RepeatedPass
from services.threads.ports import AnswerLedger
from services.threads.repository import OutboxStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelaySettings(PassSettings):
    batch_size: int = 200
    interval_s: float = 0.1
    # After a wake-up (a record was stored), wait this long so the records stored
    # meanwhile go in the same batch: one ledger call and one outbox delete per
    # batch rather than per answer (each is a commit, i.e. a WAL flush).
    linger_s: float = 0.05
    backoff_s: float = 0.1  # the first pause after a failed pass
    max_backoff_s: float = 5.0
    backlog_refresh_s: float = 1.0


class LedgerRelay:
    def __init__(
        self, outbox: OutboxStore, ledger: AnswerLedger, settings: RelaySettings
    ) -> None:
        self.outbox = outbox
        self.ledger = ledger
        self.settings = settings
        self._loop = RepeatedPass("ledger relay", self.send_pending, settings,
                                  after_pass=self._after_pass)
        self._backlog_checked = 0.0
        self.sent = 0

    def notify(self) -> None:
        """A record was just written: send soon rather than at the next tick."""
        self._loop.notify()

    def start(self) -> None:
        self._loop.start()

    async def send_pending(self) -> int:
        """Sends one batch; returns how many records the ledger acknowledged."""
        sent = await self.outbox.relay_outbox_batch(
            self.settings.batch_size, self.ledger.record_answers
        )
        self.sent += sent
        return sent

    async def _after_pass(self, failures: int) -> None:
        await self._refresh_backlog(force=failures == 1)  # at once when the ledger goes

    async def _refresh_backlog(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._backlog_checked < self.settings.backlog_refresh_s:
            return
        self._backlog_checked = now
        try:
            LEDGER_BACKLOG.set(await self.outbox.outbox_size())
        except Exception as exc:  # noqa: BLE001 - a metric must not stop the relay
            log.warning("ledger backlog unknown", extra={"error": str(exc)})

    async def stop(self, flush_seconds: float) -> None:
        """Stops the loop, then flushes what the ledger takes within ``flush_seconds``."""
        deadline = time.monotonic() + flush_seconds
        await self._loop.stop()
        flushed = 0
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                sent = await asyncio.wait_for(self.send_pending(), remaining)
            except Exception as exc:  # noqa: BLE001 - what is left stays in the outbox
                log.warning("ledger flush stopped; records kept for the next start",
                            extra={"error": str(exc)})
                break
            flushed += sent
            if sent == 0:
                break
        await self._refresh_backlog(force=True)
        log.info("ledger relay stopped", extra={"flushed": flushed})
