"""The threads service with the real llm service (both stateful APIs) over HTTP to the
offline OpenAI server, and the real ledger behind the outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from coach.ledger.v1 import ledger_service_pb2 as ledger_pb
from coach.ledger.v1 import ledger_service_pb2_grpc as ledger_grpc
from coach.threads.v1 import threads_service_pb2 as pb
from coach.threads.v1 import threads_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2

from tests.helpers.polling import eventually
from tests.helpers.services import RunningService, fresh_database, start_service, stop_service
from tests.threads.builders import cheap, exchange, turn_request

TURNS = 60


@pytest.fixture(scope="module")
async def real_llm(offline_openai: Any) -> AsyncIterator[RunningService]:
    service = await start_service("llm", {
        "OPENAI_BASE_URL": offline_openai.base_url, "OPENAI_API_KEY": "test",
        "COACH_SHUTDOWN_GRACE_SECONDS": "0.5",
    })
    yield service
    await stop_service(service, grace=0.5)


@pytest.fixture(scope="module")
async def own_pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A database of its own: the session's threads replicas relay the shared outbox
    to the fake ledger, and would take records meant for the real one."""
    async with fresh_database(pg_admin_url, "coach_threads_int") as url:
        yield url


@pytest.fixture(scope="module")
async def real_ledger(own_pg_url: str) -> AsyncIterator[RunningService]:
    service = await start_service("ledger", {"DATABASE_URL": own_pg_url})
    yield service
    await stop_service(service, grace=0.5)


@pytest.fixture(scope="module", params=["responses", "assistants"])
async def suite(
    request: pytest.FixtureRequest, own_pg_url: str, real_llm: RunningService,
    real_ledger: RunningService,
) -> AsyncIterator[tuple[str, pb_grpc.ThreadsServiceStub, ledger_grpc.LedgerServiceStub]]:
    api = request.param
    threads = await start_service("threads", {
        "DATABASE_URL": own_pg_url,
        "COACH_LLM_ADDR": real_llm.address,
        "COACH_LEDGER_ADDR": real_ledger.address,
        "COACH_STATEFUL_API": api,
        "COACH_THREADS_RELAY_INTERVAL_SECONDS": "0.05",
        # The window rule (rotate once full); the cache-aware rule is test_threads_domain's.
        "COACH_PRUNE_CACHE_COLD_SECONDS": "0",
    })
    async with grpc.aio.insecure_channel(threads.address) as t, \
            grpc.aio.insecure_channel(real_ledger.address) as lg:
        yield api, pb_grpc.ThreadsServiceStub(t), ledger_grpc.LedgerServiceStub(lg)
    await stop_service(threads)


async def user_report(ledger: ledger_grpc.LedgerServiceStub, user_id: str) -> list[Any]:
    report = await ledger.GetDailyReport(ledger_pb.GetDailyReportRequest(
        grouping=ledger_pb.REPORT_GROUPING_USER, page_size=1000))
    return [row for row in report.rows if row.key == user_id]


# The defaults: the window (messages) and how many must leave it before the background fold
# (and with it the rotation ahead) runs.
KEEP = 20
FOLD_MIN = 8


async def settled(db: asyncpg.Connection, user_id: str) -> bool:
    """The rotation a reply brought due has been made ahead: the active conversation holds
    less than a fold's worth past the window."""
    held = await db.fetchval(
        """SELECT seed_turns + turns_in_window FROM threads.conversations
            WHERE user_id = $1 AND status = 'active'""", user_id)
    return held is not None and held < KEEP + FOLD_MIN


async def test_long_conversation_on_the_real_stack(suite: Any, own_pg_url: str) -> None:
    api, stub, ledger = suite
    user_id = f"int-{api}-{id(suite)}"
    inputs: list[int] = []
    db = await asyncpg.connect(own_pg_url)
    try:
        await _converse(stub, db, user_id, inputs)
    finally:
        await db.close()
    answers = TURNS
    view = await stub.GetConversation(pb.GetConversationRequest(user_id=user_id))
    assert view.api == api
    assert view.generation >= 3, "the conversation was rotated as it grew"
    assert view.summary and view.turns_in_window <= 40
    # Bounded upstream context: the last turns send no more than the turns just
    # before the first rotation did (a growing thread would send ~3x by now).
    assert max(inputs[-10:]) <= max(inputs[:16]) * 1.3, inputs
    listed = await stub.ListMessages(pb.ListMessagesRequest(user_id=user_id, page_size=500))
    assert len(listed.messages) == 2 * TURNS

    # Every answer reaches the ledger exactly once, summaries charged along.
    async def all_recorded() -> list[Any] | None:
        rows = await user_report(ledger, user_id)
        return rows if sum(r.calls for r in rows) >= answers else None

    rows = await eventually(all_recorded, what=f"{answers} answers in the ledger")
    assert sum(r.calls for r in rows) == answers
    assert sum(r.cost_usd_nanos for r in rows) > 0
    print(f"\n{api}: input tokens per stateful turn {inputs}")


async def test_baseline_policy_context_grows_without_pruning(suite: Any) -> None:
    api, stub, _ = suite
    if api != "responses":
        pytest.skip("one backend is enough to show the baseline's growth")
    user_id = f"int-baseline-{id(suite)}"
    inputs = []
    for i in range(36):
        done = await stub.RunStatefulTurn(turn_request(
            user_id, f"Turn {i}: I want to keep training for my 10k, what next?", baseline=True))
        inputs.append(done.exchange.charges[0].usage.input_tokens)
    view = await stub.GetConversation(pb.GetConversationRequest(user_id=user_id))
    assert view.generation == 1 and view.summary == ""
    assert inputs[-1] > 2 * inputs[11]  # it keeps growing with every turn
    print(f"\nbaseline: input tokens per turn {inputs}")


async def _converse(stub: Any, db: asyncpg.Connection, user_id: str,
                    inputs: list[int]) -> None:
    """TURNS messages, three in five stateful. A user's next message comes seconds after a
    reply, not milliseconds: each waits for the rotation the last reply brought due, as it
    would have been made ahead by then (sent back to back, a turn wins the race with the
    rotation ahead and runs on up to the backstop, two windows past the limit, as
    test_threads_folding shows)."""
    for i in range(TURNS):
        if i % 5 == 2:
            await stub.RecordExchange(exchange(user_id, f"thanks {i}", "Anytime."))
        elif i % 5 == 4:
            await stub.RecordExchange(cheap(user_id, f"did my pushups, day {i}",
                                            "Nice work. Same time tomorrow?"))
        else:
            done = await stub.RunStatefulTurn(turn_request(
                user_id, f"Turn {i}: I want to keep training for my 10k, what next?"))
            assert done.created and done.exchange.route == types_pb2.ROUTE_ASSISTANT
            assert done.exchange.coach_texts and done.exchange.model
            answer = next(c for c in done.exchange.charges if c.purpose == "answer")
            inputs.append(answer.usage.input_tokens)
            await eventually(lambda: settled(db, user_id),
                             what=f"the rotation ahead after turn {i}")
