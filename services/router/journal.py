"""The router's write-behind journal: answers are stored after the reply, never lost.

Storing an answer used to cost the caller a synchronous hop to the threads
service and a database transaction. Now an answer given outside the stateful
tier (canned, cheap tier, fallback) is appended to a local journal file
before the reply goes out, and a background task sends the journal to
threads in batches (``RecordExchanges``: one transaction per batch, each
exchange idempotent on its request id).

Durability: the append is a plain ``write`` to a file opened O_APPEND, so an
answer survives the router being killed (the kernel has it); it does not
survive the machine losing power before the page cache is written, unless
``fsync`` is on (COACH_ROUTER_JOURNAL_FSYNC). At start the router sends
whatever an earlier process left in the directory; sending twice is safe.

Order: a user's answers reach threads in the order they were given; before
anything reads the user's state from threads, or runs a stateful turn for
them, the router waits until that user's journaled answers are stored
(``flush_user``), so the conversation never misses an exchange.

Failure: while threads is unreachable the journal keeps answers on disk and
retries with backoff; past ``max_pending`` unsent answers the router refuses
new messages with UNAVAILABLE rather than growing without bound. An answer
threads can never store (its request id belongs to another user's message)
is set aside in ``rejected.jsonl`` and logged, not retried.

Files: ``journal-<n>.jsonl`` segments, one JSON answer per line; a segment is
deleted once every answer in it is stored. ``LOCK`` keeps a second router
out of the directory.

Replicas sharing one volume (docker-compose ``--scale router=N``): each router journals
in a folder of its own under one parent (COACH_ROUTER_JOURNAL_DIR with ``{hostname}``),
and at start adopts the folders no live router holds (their LOCK is free: the router
that wrote them is gone, e.g. a container that was recreated under another name): it
moves their segments into its own folder and sends them, so no answer waits for a
router that will never come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.common.errors import CoachError, ConfigError, Unavailable
from services.common.exchange import Exchange
from services.common.metrics import JOURNAL_PENDING, JOURNAL_STORED

log = logging.getLogger(__name__)

SEGMENT_GLOB = "journal-*.jsonl"


@dataclass(frozen=True)
class BatchOutcome:
    """What threads did with one answer of a batch."""

    request_id: str
    rejected_reason: str = ""
    rejected_message: str = ""


class JournalSink(Protocol):
    async def record_batch(self, answers: Sequence[Exchange], timeout: float) -> list[BatchOutcome]:
        """Stores the answers in order; raises CoachError when the batch could not be sent."""
        ...



@dataclass(frozen=True)
class JournalSettings:
    directory: Path
    fsync: bool = False
    batch_size: int = 256
    # How long a batch may wait to fill up. Nobody waits on it: the reply went out already,
    # and a read of the user's state or a stateful turn sends the user's answers at once.
    # Storing has a fixed CPU cost per batch (the transaction, the ledger outbox and relay,
    # the change stream) across threads, PostgreSQL and the ledger, so larger batches cost
    # less per answer (measured: docs/decisions.md). What it delays: an answer reaching
    # threads (another router replica sees it up to this much later) and the ledger's
    # reports.
    linger_s: float = 0.25
    # Kept under threads' request limit (COACH_THREADS_MAX_MESSAGE_BYTES, 8 MiB by default).
    batch_bytes: int = 2 * 1024 * 1024
    max_pending: int = 50_000
    segment_records: int = 4096
    send_timeout_s: float = 10.0
    retry_max_s: float = 2.0
    # Adopt the journals other routers left in sibling folders (see the module doc).
    adopt_siblings: bool = False


@dataclass
class _Entry:
    segment: int
    answer: Exchange
    size: int


class AnswerJournal:
    def __init__(self, settings: JournalSettings, sink: JournalSink) -> None:
        self.settings = settings
        self.sink = sink
        self._pending: deque[_Entry] = deque()
        self._per_user: Counter[str] = Counter()
        self._per_segment: Counter[int] = Counter()
        self._segment = 0
        self._segment_records = 0
        self._fd = -1
        self._lock_fd = -1
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._progress = asyncio.Event()
        self._refused = asyncio.Event()  # a fresh event after each batch threads did not take
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # Segments up to this one held answers an earlier process left (0: none).
        self._leftovers_through = 0

    # -- life cycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Locks the directory, queues what an earlier process left, starts sending."""
        directory = self.settings.directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / "LOCK", os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"the answer journal {directory} cannot be used ({exc.strerror}): set "
                "COACH_ROUTER_JOURNAL_DIR to a writable folder on a volume of its own"
            ) from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            raise ConfigError(
                f"the answer journal {directory} is in use by another router: give each router "
                "its own COACH_ROUTER_JOURNAL_DIR"
            ) from exc
        if self.settings.adopt_siblings:
            self._adopt_orphans(directory)
        left = self._load_leftovers(directory)
        self._leftovers_through = self._segment if left else 0
        if left:
            log.warning("journal: sending answers an earlier process left unsent",
                        extra={"answers": left})
        self._open_segment(self._segment + 1)
        JOURNAL_PENDING.set(len(self._pending))
        self._task = asyncio.create_task(self._send_forever(), name="answer-journal")

    async def close(self, timeout: float) -> None:
        """Sends what is pending (up to ``timeout``); what is left stays on disk for next start."""
        self._closing = True
        self._hurry.set()
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._pending:
            log.warning("journal: answers left on disk, sent at next start",
                        extra={"answers": len(self._pending)})
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = -1

    # -- the hot path ---------------------------------------------------------------------

    def ensure_room(self) -> None:
        """Raises Unavailable when the router should take no new message (checked before any
        upstream call, so an answer that was paid for is never refused by :meth:`append`)."""
        if self._closing:
            raise Unavailable("the router is stopping; retry with the same request_id",
                              reason="ROUTER_STOPPING", retry_after_s=1.0)
        if len(self._pending) >= self.settings.max_pending:
            raise Unavailable(
                "answers cannot be stored right now (the conversation store is behind); "
                "retry with the same request_id",
                reason="STORAGE_UNAVAILABLE", retry_after_s=2.0,
            )

    def append(self, answer: Exchange) -> None:
        """Makes the answer durable locally and queues it for threads."""
        if self._segment_records >= self.settings.segment_records:
            self._open_segment(self._segment + 1)
        line = json.dumps(answer.to_json(), separators=(",", ":"), ensure_ascii=False).encode()
        try:
            os.write(self._fd, line + b"\n")
            if self.settings.fsync:
                os.fsync(self._fd)
        except OSError as exc:  # disk full, volume gone: say so, the caller retries
            log.error("journal: cannot write", extra={"error": repr(exc)})
            raise Unavailable("the router cannot record answers right now; retry with the "
                              "same request_id", reason="JOURNAL_UNWRITABLE",
                              retry_after_s=2.0) from exc
        self._segment_records += 1
        self._queue(_Entry(self._segment, answer, len(line)))
        JOURNAL_PENDING.set(len(self._pending))
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def leftovers_stored(self) -> None:
        """Returns once the answers an earlier process left in the journal are stored."""
        while self._pending and self._pending[0].segment <= self._leftovers_through:
            await self._progress.wait()  # a fresh event after each batch stored

    def pending_for(self, user_id: str) -> int:
        """This user's answers journaled and not stored yet."""
        return self._per_user.get(user_id, 0)

    async def flush_user(self, user_id: str, timeout: float) -> None:
        """Waits until every journaled answer of the user is stored in threads; UNAVAILABLE
        as soon as threads refuses a batch sent while waiting (the store is down: the caller
        hears so at once and retries, rather than at its deadline), or when ``timeout`` runs
        out."""
        if not self._per_user[user_id]:
            return
        deadline = time.monotonic() + timeout
        self._hurry.set()
        self._wake.set()
        while self._per_user[user_id]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._not_stored()
            refused = self._refused
            waits = [asyncio.ensure_future(self._progress.wait()),
                     asyncio.ensure_future(refused.wait())]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            if refused.is_set() and self._per_user[user_id]:
                raise self._not_stored()

    @staticmethod
    def _not_stored() -> Unavailable:
        return Unavailable(
            "this user's earlier answers are not stored yet; retry with the same request_id",
            reason="STORAGE_UNAVAILABLE", retry_after_s=1.0,
        )

    # -- sending --------------------------------------------------------------------------

    async def _send_forever(self) -> None:
        delay = 0.05
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._pending) < self.settings.batch_size and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self.settings.linger_s)
            self._hurry.clear()
            batch = self._next_batch()
            try:
                outcomes = await self.sink.record_batch([e.answer for e in batch],
                                                        self.settings.send_timeout_s)
            except CoachError as err:
                log.warning("journal: threads did not take a batch; retrying",
                            extra={"answers": len(batch), "error": err.message,
                                   "retry_in_s": delay})
                refused, self._refused = self._refused, asyncio.Event()
                refused.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            delay = 0.05
            self._done(batch, outcomes)

    def _next_batch(self) -> list[_Entry]:
        batch: list[_Entry] = []
        size = 0
        for entry in self._pending:
            if batch and (len(batch) >= self.settings.batch_size
                          or size + entry.size > self.settings.batch_bytes):
                break
            batch.append(entry)
            size += entry.size
        return batch

    def _done(self, batch: list[_Entry], outcomes: list[BatchOutcome]) -> None:
        rejected = {o.request_id: o for o in outcomes if o.rejected_reason}
        for entry in batch:
            popped = self._pending.popleft()
            assert popped is entry
            outcome = rejected.get(entry.answer.request_id)
            if outcome is not None:
                self._set_aside(entry.answer, outcome)
            self._unqueue(entry)
        JOURNAL_STORED.inc(len(batch) - len(rejected))
        JOURNAL_PENDING.set(len(self._pending))
        progressed, self._progress = self._progress, asyncio.Event()
        progressed.set()

    def _set_aside(self, answer: Exchange, outcome: BatchOutcome) -> None:
        log.error("journal: threads refused an answer; set aside in rejected.jsonl",
                  extra={"request_id": answer.request_id, "user_id": answer.user_id,
                         "reason": outcome.rejected_reason, "detail": outcome.rejected_message})
        record = {"answer": answer.to_json(), "reason": outcome.rejected_reason,
                  "detail": outcome.rejected_message}
        with open(self.settings.directory / "rejected.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")

    # -- bookkeeping ----------------------------------------------------------------------

    def _queue(self, entry: _Entry) -> None:
        self._pending.append(entry)
        self._per_user[entry.answer.user_id] += 1
        self._per_segment[entry.segment] += 1

    def _unqueue(self, entry: _Entry) -> None:
        user = entry.answer.user_id
        self._per_user[user] -= 1
        if not self._per_user[user]:
            del self._per_user[user]
        self._per_segment[entry.segment] -= 1
        if not self._per_segment[entry.segment]:
            del self._per_segment[entry.segment]
            if entry.segment != self._segment:
                self._remove_segment(entry.segment)

    def _path(self, segment: int) -> Path:
        return self.settings.directory / f"journal-{segment:010d}.jsonl"

    def _open_segment(self, segment: int) -> None:
        previous = self._segment
        if self._fd >= 0:
            os.close(self._fd)
        self._segment, self._segment_records = segment, 0
        self._fd = os.open(self._path(segment), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        if previous and not self._per_segment[previous]:
            self._remove_segment(previous)

    def _remove_segment(self, segment: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(segment).unlink()

    def _adopt_orphans(self, directory: Path) -> None:
        """Moves the segments of sibling journals no live router holds into ``directory``."""
        numbers = [int(p.stem.removeprefix("journal-")) for p in directory.glob(SEGMENT_GLOB)]
        following = max(numbers, default=0)
        for sibling in sorted(directory.parent.iterdir()):
            if sibling == directory or not (sibling / "LOCK").is_file():
                continue
            try:
                fd = os.open(sibling / "LOCK", os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live router's
            try:
                moved = 0
                for path in sorted(sibling.glob(SEGMENT_GLOB)):
                    following += 1
                    path.rename(directory / f"journal-{following:010d}.jsonl")
                    moved += 1
                (sibling / "LOCK").unlink()
                with contextlib.suppress(OSError):
                    sibling.rmdir()
                if moved:
                    log.warning("journal: adopting the answers a router that is gone left unsent",
                                extra={"folder": str(sibling), "segments": moved})
            finally:
                os.close(fd)

    def _load_leftovers(self, directory: Path) -> int:
        loaded = 0
        for path in sorted(directory.glob(SEGMENT_GLOB)):
            segment = int(path.stem.removeprefix("journal-"))
            self._segment = max(self._segment, segment)
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            for number, line in enumerate(lines, 1):
                try:
                    answer = Exchange.from_json(json.loads(line))
                    size = len(line.encode())
                except (ValueError, KeyError, TypeError):
                    # A line cut short by a crash mid-write: its caller got no reply and retries.
                    log.warning("journal: unreadable line skipped",
                                extra={"file": path.name, "line": number})
                    continue
                self._queue(_Entry(segment, answer, size))
                loaded += 1
            if not self._per_segment[segment]:
                path.unlink()
        return loaded
