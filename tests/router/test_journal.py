"""The router's write-behind journal: durable before the reply, stored in order, never lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.common.errors import ConfigError, Unavailable
from services.common.exchange import Exchange
from services.common.usage import Charge, Usage
from services.common.vocabulary import MessageType, Route
from services.router.journal import AnswerJournal, BatchOutcome, JournalSettings
from tests.helpers.polling import eventually


def answer(user: str, n: int, route: Route = Route.PATTERN) -> Exchange:
    charges = (Charge("gpt-5.4-mini", Usage(input_tokens=90, output_tokens=12)),) \
        if route is Route.COMPLETIONS else ()
    return Exchange(request_id=f"{user}-{n}", user_id=user, user_text=f"message {n}",
                    coach_texts=(f"reply {n} ✓",), route=route,
                    message_type=MessageType.GREETING, pattern="greeting_morning",
                    model="gpt-5.4-mini" if charges else "", charges=charges, latency_ms=1)


class Sink:
    """threads as the journal sees it: stores batches, or is down."""

    def __init__(self) -> None:
        self.stored: list[Exchange] = []
        self.batches: list[int] = []
        self.down = False
        self.gate: asyncio.Event | None = None
        self.reject: dict[str, str] = {}
        self.attempts = 0
        self.at_gate = 0  # calls held at the gate right now

    async def record_batch(self, answers: Sequence[Exchange], timeout: float) -> list[BatchOutcome]:
        self.attempts += 1
        if self.gate is not None:
            self.at_gate += 1
            try:
                await self.gate.wait()
            finally:
                self.at_gate -= 1
        if self.down:
            raise Unavailable("threads is down")
        self.batches.append(len(answers))
        outcomes = []
        for a in answers:
            if a.request_id in self.reject:
                outcomes.append(BatchOutcome(a.request_id, self.reject[a.request_id], "no"))
            else:
                self.stored.append(a)
                outcomes.append(BatchOutcome(a.request_id))
        return outcomes


def journal(path: Path, sink: Sink, **kw: object) -> AnswerJournal:
    settings = JournalSettings(path, retry_max_s=0.05, **kw)  # type: ignore[arg-type]
    j = AnswerJournal(settings, sink)
    j.open()
    return j


async def settled(j: AnswerJournal) -> None:
    await eventually(lambda: not j.pending, what=lambda: f"{j.pending} answers still pending")


async def test_answers_reach_threads_in_order_in_batches_and_files_go(tmp_path: Path) -> None:
    sink = Sink()
    sink.gate = asyncio.Event()  # threads is slow: answers pile up into batches
    j = journal(tmp_path, sink, segment_records=10)
    answers = [answer("ann", n, Route.COMPLETIONS if n % 3 == 0 else Route.PATTERN)
               for n in range(35)]
    for a in answers:
        j.append(a)
    assert len(list(tmp_path.glob("journal-*.jsonl"))) == 4  # durable before anything is sent
    sink.gate.set()
    await settled(j)
    assert sink.stored == answers  # same order, charges and all
    assert len(sink.batches) < len(answers)
    await j.close(timeout=1)
    assert sum(1 for _ in tmp_path.glob("journal-*.jsonl")) <= 1  # only the last segment stays


async def test_answers_left_by_a_killed_router_are_sent_at_next_start(tmp_path: Path) -> None:
    down = Sink()
    down.down = True
    first = journal(tmp_path, down)
    answers = [answer("bo", n) for n in range(5)]
    for a in answers:
        first.append(a)
    await eventually(lambda: down.attempts >= 1, what="a first attempt to send")
    await first.close(timeout=0.05)  # as good as killed: nothing stored
    segment = max(tmp_path.glob("journal-*.jsonl"))
    with segment.open("a") as f:
        f.write('{"request_id": "cut-sh')  # a line cut short by the kill
    sink = Sink()
    second = journal(tmp_path, sink)
    await settled(second)
    assert sink.stored == answers
    await second.close(timeout=1)


async def test_a_refused_answer_is_set_aside_not_retried(tmp_path: Path) -> None:
    sink = Sink()
    sink.reject = {"cy-1": "REQUEST_ID_REUSED"}
    j = journal(tmp_path, sink)
    for n in range(3):
        j.append(answer("cy", n))
    await settled(j)
    assert [a.request_id for a in sink.stored] == ["cy-0", "cy-2"]
    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [(r["answer"]["request_id"], r["reason"]) for r in rejected] == [("cy-1", "REQUEST_ID_REUSED")]
    await j.close(timeout=1)


async def test_flush_user_waits_until_that_users_answers_are_stored(tmp_path: Path) -> None:
    sink = Sink()
    sink.down = True
    j = journal(tmp_path, sink)
    j.append(answer("di", 1))
    await j.flush_user("someone-else", timeout=0.01)  # nothing pending for them: at once
    with pytest.raises(Unavailable):
        await j.flush_user("di", timeout=0.1)
    sink.down = False
    await j.flush_user("di", timeout=2)
    assert [a.request_id for a in sink.stored] == ["di-1"]
    await j.close(timeout=1)


async def test_flush_user_says_unavailable_when_threads_refuses_not_at_its_deadline(
        tmp_path: Path) -> None:
    # The caller hears UNAVAILABLE (and retries) as soon as a batch sent while it waits is
    # refused: waiting out its whole deadline turned a database restart into
    # DEADLINE_EXCEEDED for every user with an answer in the journal.
    sink = Sink()
    sink.down = True
    sink.gate = asyncio.Event()
    j = journal(tmp_path, sink)
    j.append(answer("di", 1))
    await eventually(lambda: sink.at_gate == 1, what="a batch on its way to threads")
    waiting = asyncio.create_task(j.flush_user("di", timeout=600))
    await eventually(lambda: j.pending_for("di") == 1 and not waiting.done(),
                     what="the flush waiting on the batch")
    sink.gate.set()  # threads answers: down
    with pytest.raises(Unavailable, match="not stored yet"):
        await asyncio.wait_for(waiting, 5)
    sink.down = False
    await j.close(timeout=1)


async def test_a_full_journal_refuses_new_messages_with_unavailable(tmp_path: Path) -> None:
    sink = Sink()
    sink.down = True
    j = journal(tmp_path, sink, max_pending=3)
    for n in range(3):
        j.ensure_room()
        j.append(answer("ed", n))
    with pytest.raises(Unavailable) as caught:
        j.ensure_room()
    assert caught.value.reason == "STORAGE_UNAVAILABLE"
    sink.down = False
    await settled(j)
    j.ensure_room()
    await j.close(timeout=1)


async def test_one_router_per_journal_folder(tmp_path: Path) -> None:
    j = journal(tmp_path, Sink())
    with pytest.raises(ConfigError, match="in use by another router"):
        journal(tmp_path, Sink())
    await j.close(timeout=1)
    journal(tmp_path, Sink())  # free again once closed


async def test_an_unusable_folder_is_a_clear_start_up_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(ConfigError, match="COACH_ROUTER_JOURNAL_DIR"):
        journal(blocked / "journal", Sink())


async def test_a_router_adopts_the_journals_of_routers_gone_from_sibling_folders(
        tmp_path: Path) -> None:
    """Replicas on one volume: the answers a router that is gone left unsent are sent by the
    next router that starts; a live router's folder is left alone."""
    gone_sink, live_sink = Sink(), Sink()
    gone_sink.down = live_sink.down = True
    gone = journal(tmp_path / "router-a", gone_sink)
    live = journal(tmp_path / "router-b", live_sink)
    left = [answer("ann", n) for n in range(3)]
    for a in left:
        gone.append(a)
    live.append(answer("bob", 0))
    await gone.close(timeout=0.1)  # router-a is gone, its answers on disk
    sink = Sink()
    adopter = journal(tmp_path / "router-c", sink, adopt_siblings=True)
    await settled(adopter)
    assert sink.stored == left
    assert not (tmp_path / "router-a").exists()
    assert list((tmp_path / "router-b").glob("journal-*.jsonl"))  # live: untouched
    live_sink.down = False
    await settled(live)
    await live.close(timeout=1)
    await adopter.close(timeout=1)


async def test_leftovers_stored_waits_for_what_an_earlier_process_left(tmp_path: Path) -> None:
    sink = Sink()
    sink.down = True
    first = journal(tmp_path, sink)
    first.append(answer("ann", 0))
    await first.close(timeout=0.1)
    sink.gate = asyncio.Event()
    second = journal(tmp_path, sink)
    second.append(answer("ann", 1))
    sink.down = False
    waiting = asyncio.create_task(second.leftovers_stored())
    await eventually(lambda: sink.at_gate > 0, what="the leftovers' flush held at the gate")
    assert not waiting.done()
    sink.gate.set()
    await asyncio.wait_for(waiting, 5)
    await settled(second)
    await second.close(timeout=1)
    fresh = journal(tmp_path / "empty", Sink())
    await asyncio.wait_for(fresh.leftovers_stored(), 1)  # nothing left: at once
    await fresh.close(timeout=1)
