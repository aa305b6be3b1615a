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
import contextlib
import logging
import random
import time
from dataclasses import dataclass

from services.common.metrics import LEDGER_BACKLOG
from services.threads.ports import AnswerLedger
from services.threads.repository import ThreadsRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelaySettings:
    batch_size: int = 200
    interval_s: float = 0.1
    # After a wake-up (a record was stored), wait this long so the records stored
    # meanwhile go in the same batch: one ledger call and one outbox delete per
    # batch rather than per answer (each is a commit, i.e. a WAL flush).
    linger_s: float = 0.05
    max_backoff_s: float = 5.0
    backlog_refresh_s: float = 1.0


class LedgerRelay:
    def __init__(
        self, repository: ThreadsRepository, ledger: AnswerLedger, settings: RelaySettings
    ) -> None:
        self.repository = repository
        self.ledger = ledger
        self.settings = settings
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._backlog_checked = 0.0
        self.sent = 0

    def notify(self) -> None:
        """A record was just written: send soon rather than at the next tick."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-relay")

    async def send_pending(self) -> int:
        """Sends one batch; returns how many records the ledger acknowledged."""
        sent = await self.repository.relay_outbox_batch(
            self.settings.batch_size, self.ledger.record_answers
        )
        self.sent += sent
        return sent

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            try:
                sent = await self.send_pending()
            except Exception as exc:  # noqa: BLE001 - the relay outlives any one failure
                failures += 1
                delay = min(self.settings.max_backoff_s,
                            self.settings.interval_s * 2 ** min(failures, 16))
                delay *= random.uniform(0.5, 1.0)
                log.warning("ledger relay failed; records kept",
                            extra={"error": str(exc), "attempt": failures,
                                   "retry_in_ms": round(delay * 1000)})
                await self._refresh_backlog(force=failures == 1)
                await self._sleep(delay, wake_early=False)
                continue
            if failures:
                log.info("ledger relay recovered", extra={"attempts": failures})
                failures = 0
            await self._refresh_backlog()
            if sent >= self.settings.batch_size:
                continue  # more waiting: no pause
            await self._sleep(self.settings.interval_s, wake_early=True)

    async def _sleep(self, seconds: float, *, wake_early: bool) -> None:
        if self._stopping:
            return
        if wake_early:
            try:
                await asyncio.wait_for(self._wake.wait(), seconds)
            except TimeoutError:
                return
            if self.settings.linger_s > 0 and not self._stopping:
                await asyncio.sleep(min(self.settings.linger_s, seconds))
        else:
            await asyncio.sleep(seconds)

    async def _refresh_backlog(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._backlog_checked < self.settings.backlog_refresh_s:
            return
        self._backlog_checked = now
        try:
            LEDGER_BACKLOG.set(await self.repository.outbox_size())
        except Exception as exc:  # noqa: BLE001 - a metric must not stop the relay
            log.warning("ledger backlog unknown", extra={"error": str(exc)})

    async def stop(self, flush_seconds: float) -> None:
        """Stops the loop, then flushes what the ledger takes within ``flush_seconds``."""
        deadline = time.monotonic() + flush_seconds
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
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
