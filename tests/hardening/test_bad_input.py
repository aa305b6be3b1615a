"""Bad input on every RPC of every service: INVALID_ARGUMENT with BadRequest field violations,
never INTERNAL, and nothing stored, charged or sent upstream."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from coach.ledger.v1 import ledger_service_pb2 as ledger_pb
from coach.llm.v1 import llm_service_pb2 as llm_pb
from coach.router.v1 import router_service_pb2 as router_pb
from coach.threads.v1 import threads_service_pb2 as threads_pb
from coach.type.v1 import types_pb2
from google.protobuf import timestamp_pb2

from tests.helpers.status import call_failure, stored_for_users
from tests.helpers.suite import MAX_MESSAGE_BYTES

PREFIX = f"bad-{uuid.uuid4().hex[:8]}-"
USER = PREFIX + "u"
LONG_USER = PREFIX + "x" * 129
NOW = timestamp_pb2.Timestamp(seconds=1_790_000_000)


def ctx(**kw: Any) -> types_pb2.UserContext:
    return types_pb2.UserContext(**kw)


def chat(**kw: Any) -> router_pb.ChatRequest:
    base: dict[str, Any] = {"user_id": USER, "message": "hi there", "request_id": uuid.uuid4().hex}
    base.update(kw)
    return router_pb.ChatRequest(**base)


def classify(**kw: Any) -> router_pb.ClassifyRequest:
    base: dict[str, Any] = {"user_id": USER, "message": "hi there"}
    base.update(kw)
    return router_pb.ClassifyRequest(**base)


def exchange(**kw: Any) -> threads_pb.RecordExchangeRequest:
    base: dict[str, Any] = {
        "request_id": uuid.uuid4().hex, "user_id": USER, "user_text": "hi",
        "coach_texts": ["Hello!"], "route": types_pb2.ROUTE_PATTERN,
        "message_type": types_pb2.MESSAGE_TYPE_GREETING, "pattern": "greeting_morning",
    }
    base.update(kw)
    return threads_pb.RecordExchangeRequest(exchange=threads_pb.Exchange(**base))


def turn(**kw: Any) -> threads_pb.RunStatefulTurnRequest:
    base: dict[str, Any] = {
        "request_id": uuid.uuid4().hex, "user_id": USER, "message": "I keep failing",
        "message_type": types_pb2.MESSAGE_TYPE_STRUGGLING, "model": "gpt-4o",
    }
    base.update(kw)
    return threads_pb.RunStatefulTurnRequest(**base)


def complete(**kw: Any) -> llm_pb.CompleteRequest:
    base: dict[str, Any] = {"request_id": uuid.uuid4().hex, "user_id": USER, "message": "hi"}
    base.update(kw)
    return llm_pb.CompleteRequest(**base)


def stateful(**kw: Any) -> llm_pb.StatefulTurnRequest:
    base: dict[str, Any] = {"request_id": uuid.uuid4().hex, "user_id": USER,
                            "conversation_id": "conv_x", "message": "hi"}
    base.update(kw)
    return llm_pb.StatefulTurnRequest(**base)


def record(**kw: Any) -> ledger_pb.RecordAnswersRequest:
    base: dict[str, Any] = {
        "request_id": uuid.uuid4().hex, "user_id": USER, "route": types_pb2.ROUTE_PATTERN,
        "message_type": types_pb2.MESSAGE_TYPE_GREETING, "answer_time": NOW,
    }
    base.update(kw)
    return ledger_pb.RecordAnswersRequest(records=[ledger_pb.AnswerRecord(**base)])


def usage(**kw: int) -> types_pb2.Usage:
    return types_pb2.Usage(**kw)


# (service, method, request, field the violation must name)
CASES: list[tuple[str, str, Any, str]] = [
    # -- router.Chat
    ("router", "Chat", chat(message="   \n\t"), "message"),
    ("router", "Chat", chat(message="x" * 4001), "message"),
    ("router", "Chat", chat(message="a\x00b"), "message"),
    ("router", "Chat", chat(user_id=""), "user_id"),
    ("router", "Chat", chat(user_id=LONG_USER), "user_id"),
    ("router", "Chat", chat(user_id=USER + "\x00"), "user_id"),
    ("router", "Chat", chat(request_id="r" * 200), "request_id"),
    ("router", "Chat", chat(context=ctx(local_hour=24)), "context.local_hour"),
    ("router", "Chat", chat(context=ctx(local_hour=-1)), "context.local_hour"),
    ("router", "Chat", chat(context=ctx(timezone="Mars/Olympus_Mons")), "context.timezone"),
    ("router", "Chat", chat(context=ctx(timezone="../../etc/passwd")), "context.timezone"),
    ("router", "Chat", chat(context=ctx(current_streak=-3)), "context.current_streak"),
    ("router", "Chat", chat(context=ctx(display_name="n\x00")), "context.display_name"),
    # -- router.Classify
    ("router", "Classify", classify(message=""), "message"),
    ("router", "Classify", classify(message="x" * 4001), "message"),
    ("router", "Classify", classify(user_id=LONG_USER), "user_id"),
    ("router", "Classify", classify(history=[types_pb2.Turn(role=7, text="hey")]), "history[0].role"),
    ("router", "Classify", classify(message_count=-1), "message_count"),
    ("router", "Classify", classify(context=ctx(local_hour=99)), "context.local_hour"),
    ("router", "Classify", classify(context=ctx(timezone="Not/AZone")), "context.timezone"),
    ("router", "Classify", classify(context=ctx(current_streak=-1)), "context.current_streak"),
    # -- threads
    ("threads", "BeginAnswer", threads_pb.BeginAnswerRequest(
        user_id="", request_id="r", claim_token="t", lease_ms=1000), "user_id"),
    ("threads", "BeginAnswer", threads_pb.BeginAnswerRequest(
        user_id=USER, request_id="", claim_token="t", lease_ms=1000), "request_id"),
    ("threads", "BeginAnswer", threads_pb.BeginAnswerRequest(
        user_id=USER, request_id="r", claim_token="", lease_ms=1000), "claim_token"),
    ("threads", "BeginAnswer", threads_pb.BeginAnswerRequest(
        user_id=USER, request_id="r", claim_token="t", lease_ms=0), "lease_ms"),
    ("threads", "BeginAnswer", threads_pb.BeginAnswerRequest(
        user_id=USER, request_id="r", claim_token="t", lease_ms=1000, wait_ms=-1), "wait_ms"),
    ("threads", "AbandonAnswer", threads_pb.AbandonAnswerRequest(request_id="", claim_token="t"),
     "request_id"),
    ("threads", "AbandonAnswer", threads_pb.AbandonAnswerRequest(request_id="r", claim_token=""),
     "claim_token"),
    ("threads", "AbandonStaleClaims",
     threads_pb.AbandonStaleClaimsRequest(holder="", current_token_prefix="p."), "holder"),
    ("threads", "AbandonStaleClaims",
     threads_pb.AbandonStaleClaimsRequest(holder="h", current_token_prefix=""),
     "current_token_prefix"),
    ("threads", "GetUserState", threads_pb.GetUserStateRequest(user_id=""), "user_id"),
    ("threads", "GetUserState", threads_pb.GetUserStateRequest(user_id=LONG_USER), "user_id"),
    ("threads", "GetUserState", threads_pb.GetUserStateRequest(user_id=USER, recent_turns=-1),
     "recent_turns"),
    ("threads", "GetUserState", threads_pb.GetUserStateRequest(user_id=USER + "\x00"), "user_id"),
    ("threads", "RecordExchange", exchange(route=99), "exchange.route"),
    ("threads", "RecordExchange", exchange(message_type=77), "exchange.message_type"),
    ("threads", "RecordExchange", exchange(user_text="  "), "exchange.user_text"),
    ("threads", "RecordExchange", exchange(user_text="x" * 4001), "exchange.user_text"),
    ("threads", "RecordExchange", exchange(user_text="a\x00b"), "exchange.user_text"),
    ("threads", "RecordExchange", exchange(coach_texts=["ok\x00"]), "exchange.coach_texts"),
    ("threads", "RecordExchange", exchange(user_id=""), "exchange.user_id"),
    ("threads", "RecordExchange", exchange(user_id=LONG_USER), "exchange.user_id"),
    ("threads", "RecordExchange", exchange(request_id=""), "exchange.request_id"),
    ("threads", "RecordExchange", exchange(latency_ms=-5), "exchange.latency_ms"),
    ("threads", "RecordExchange", exchange(pattern="p" * 300), "exchange.pattern"),
    ("threads", "RecordExchange", exchange(model="m\x00"), "exchange.model"),
    ("threads", "RecordExchange",
     exchange(charges=[types_pb2.Charge(model="gpt-4o-mini", usage=usage(input_tokens=-1))]),
     "exchange.charges[0].usage"),
    ("threads", "RecordExchange",
     exchange(charges=[types_pb2.Charge(model="gpt-4o-mini",
                                                 usage=usage(input_tokens=2**62))]),
     "exchange.charges[0].usage"),
    ("threads", "RecordExchange",
     exchange(charges=[types_pb2.Charge(
         model="gpt-4o-mini", usage=usage(input_tokens=5, cached_input_tokens=9))]),
     "exchange.charges[0].usage"),
    ("threads", "RecordExchange",
     exchange(charges=[types_pb2.Charge(
         model="gpt-4o-mini", usage=usage(output_tokens=1, reasoning_tokens=2))]),
     "exchange.charges[0].usage"),
    ("threads", "RecordExchanges",
     threads_pb.RecordExchangesRequest(exchanges=[exchange().exchange] * 1001), "exchanges"),
    ("threads", "RecordExchanges", threads_pb.RecordExchangesRequest(origin="o" * 300), "origin"),
    ("threads", "RecordExchanges", threads_pb.RecordExchangesRequest(origin="a\x00b"), "origin"),
    ("threads", "RunStatefulTurn", turn(origin="o" * 300), "origin"),
    ("threads", "RunStatefulTurn", turn(message_type=99), "message_type"),
    ("threads", "RunStatefulTurn", turn(message=""), "message"),
    ("threads", "RunStatefulTurn", turn(message="x" * 4001), "message"),
    ("threads", "RunStatefulTurn", turn(message="a\x00b"), "message"),
    ("threads", "RunStatefulTurn", turn(request_id=""), "request_id"),
    ("threads", "RunStatefulTurn", turn(user_id=LONG_USER), "user_id"),
    ("threads", "RunStatefulTurn", turn(temperature=3.5), "temperature"),
    ("threads", "RunStatefulTurn", turn(max_output_tokens=-1), "max_output_tokens"),
    ("threads", "RunStatefulTurn", turn(context=ctx(current_streak=-2)), "context.current_streak"),
    ("threads", "RunStatefulTurn", turn(context=ctx(display_name="d" * 300)), "context.display_name"),
    ("threads", "ListMessages", threads_pb.ListMessagesRequest(user_id=""), "user_id"),
    ("threads", "ListMessages", threads_pb.ListMessagesRequest(user_id=USER, page_size=-1), "page_size"),
    ("threads", "ListMessages", threads_pb.ListMessagesRequest(user_id=USER, page_token="garbage!"),
     "page_token"),
    ("threads", "ListMessages",
     threads_pb.ListMessagesRequest(user_id=USER, page_token="djE6MDAwMDAwMDAwMDAwOjE"), "page_token"),
    ("threads", "CountMessages", threads_pb.CountMessagesRequest(user_id=""), "user_id"),
    ("threads", "CountMessages", threads_pb.CountMessagesRequest(user_id=LONG_USER), "user_id"),
    ("threads", "GetConversation", threads_pb.GetConversationRequest(user_id="  "), "user_id"),
    # -- llm
    ("llm", "Complete", complete(message=" "), "message"),
    ("llm", "Complete", complete(message="x" * 4001), "message"),
    ("llm", "Complete", complete(message="a\x00b"), "message"),
    ("llm", "Complete", complete(user_id=LONG_USER), "user_id"),
    ("llm", "Complete", complete(history=[llm_pb.ChatTurn(role=7, text="hey")]), "history[0].role"),
    ("llm", "Complete", complete(generation=llm_pb.Generation(temperature=9)), "generation.temperature"),
    ("llm", "Complete", complete(generation=llm_pb.Generation(max_output_tokens=-1)),
     "generation.max_output_tokens"),
    ("llm", "Complete", complete(audience=llm_pb.Audience(current_streak=-1)), "audience.current_streak"),
    ("llm", "CreateConversation", llm_pb.CreateConversationRequest(user_id=""), "user_id"),
    ("llm", "CreateConversation", llm_pb.CreateConversationRequest(
        user_id=USER, seed_turns=[llm_pb.ChatTurn(role=9, text="x")]), "seed_turns[0].role"),
    ("llm", "AppendTurns", llm_pb.AppendTurnsRequest(conversation_id=""), "conversation_id"),
    ("llm", "AppendTurns", llm_pb.AppendTurnsRequest(
        conversation_id="conv_x", turns=[llm_pb.ChatTurn(role=1, text=" ")]), "turns[0].text"),
    ("llm", "StatefulTurn", stateful(conversation_id=""), "conversation_id"),
    ("llm", "StatefulTurn", stateful(message=""), "message"),
    ("llm", "StatefulTurn", stateful(message="m\x00"), "message"),
    ("llm", "StatefulTurn", stateful(user_id=LONG_USER), "user_id"),
    ("llm", "Summarize", llm_pb.SummarizeRequest(previous_summary="s" * 20001), "previous_summary"),
    ("llm", "Summarize", llm_pb.SummarizeRequest(turns=[llm_pb.ChatTurn(role=0, text="x")]),
     "turns[0].role"),
    ("llm", "DeleteConversation", llm_pb.DeleteConversationRequest(conversation_id=""),
     "conversation_id"),
    # -- ledger
    ("ledger", "RecordAnswers", record(route=99), "records[0].route"),
    ("ledger", "RecordAnswers", record(message_type=99), "records[0].message_type"),
    ("ledger", "RecordAnswers", record(request_id=""), "records[0].request_id"),
    ("ledger", "RecordAnswers", record(user_id=""), "records[0].user_id"),
    ("ledger", "RecordAnswers", record(user_id=USER + "\x00"), "records[0].user_id"),
    ("ledger", "RecordAnswers", record(model="m\x00"), "records[0].model"),
    ("ledger", "RecordAnswers", record(latency_ms=-1), "records[0].latency_ms"),
    ("ledger", "RecordAnswers", record(answer_time=None), "records[0].answer_time"),
    ("ledger", "RecordAnswers",
     record(charges=[types_pb2.Charge(model="gpt-4o", usage=usage(output_tokens=-4))]),
     "records[0].charges[0].usage"),
    ("ledger", "RecordAnswers",
     record(charges=[types_pb2.Charge(model="gpt-4o", usage=usage(input_tokens=2**62))]),
     "records[0].charges[0].usage"),
    ("ledger", "GetCostReport", ledger_pb.GetCostReportRequest(start_date="2026-13-40"), "start_date"),
    ("ledger", "GetCostReport", ledger_pb.GetCostReportRequest(end_date="2026-01-01"), "start_date"),
    ("ledger", "GetDailyReport", ledger_pb.GetDailyReportRequest(page_token="nope"), "page_token"),
    ("ledger", "GetDailyReport", ledger_pb.GetDailyReportRequest(page_size=-1), "page_size"),
    ("ledger", "GetDailyReport", ledger_pb.GetDailyReportRequest(grouping=99), "grouping"),
    ("ledger", "GetSavingsReport", ledger_pb.GetSavingsReportRequest(
        start_date="2026-02-02", end_date="2026-01-01"), "start_date"),
    ("ledger", "GetSavingsReport", ledger_pb.GetSavingsReportRequest(start_date="\x00"), "start_date"),
    ("ledger", "CheckUserLimits", ledger_pb.CheckUserLimitsRequest(user_id=""), "user_id"),
    ("ledger", "CheckUserLimits", ledger_pb.CheckUserLimitsRequest(user_id="u\x00"), "user_id"),
]


def _id(case: tuple[str, str, Any, str]) -> str:
    return f"{case[0]}.{case[1]}:{case[3]}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
async def test_bad_input_is_invalid_argument_naming_the_field(
    hardened: Any, case: tuple[str, str, Any, str]
) -> None:
    _, stubs = hardened
    service, method, request, field = case
    failure = await call_failure(getattr(getattr(stubs, service), method), request, timeout=10)
    assert failure is not None, f"{service}.{method} accepted bad input"
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.reason, failure
    assert any(f == field or f.startswith((field + ".", field + "["))
               for f in failure.fields), (field, failure)


def test_every_rpc_of_every_service_has_a_bad_input_case() -> None:
    from coach.ledger.v1 import ledger_service_pb2
    from coach.llm.v1 import llm_service_pb2
    from coach.threads.v1 import threads_service_pb2

    covered = ({(s, m) for s, m, _, _ in CASES}
               | {("threads", "WatchUserChanges")}  # below
               | {("llm", "GetPromptPrefix")})  # takes no fields: no input can be bad
    for service, module, name in (
        ("router", router_pb, "RouterService"), ("threads", threads_service_pb2, "ThreadsService"),
        ("llm", llm_service_pb2, "LlmService"), ("ledger", ledger_service_pb2, "LedgerService"),
    ):
        for method in module.DESCRIPTOR.services_by_name[name].methods:
            assert (service, method.name) in covered, f"{service}.{method.name} has no bad-input case"


async def test_a_bad_watch_request_is_invalid_argument(hardened: Any) -> None:
    """WatchUserChanges streams: its one field is checked before the stream starts."""
    _, stubs = hardened
    call = stubs.threads.WatchUserChanges(threads_pb.WatchUserChangesRequest(origin="o" * 300),
                                          timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_bad_input_stores_nothing_and_calls_no_upstream(hardened: Any) -> None:
    """Runs after the table (file order): none of it left a row or an upstream call."""
    suite, stubs = hardened
    calls_before = suite.upstream.stats.model_calls
    for service, method, request, _ in CASES:
        await call_failure(getattr(getattr(stubs, service), method), request, timeout=10)
    assert suite.upstream.stats.model_calls == calls_before
    stored = await stored_for_users(suite.env["DATABASE_URL"], PREFIX)
    assert stored == dict.fromkeys(stored, 0), stored


async def test_oversize_request_is_resource_exhausted_and_stores_nothing(hardened: Any) -> None:
    suite, stubs = hardened
    user = PREFIX + "big"
    big = "é" * (MAX_MESSAGE_BYTES // 2 + 100)  # 2 bytes each: just over the limit
    for method, request in (
        (stubs.router.Chat, chat(user_id=user, message=big)),
        (stubs.router.Classify, classify(user_id=user, message=big)),
        # threads takes the routers' journal batches of up to COACH_THREADS_MAX_MESSAGE_BYTES.
        (stubs.threads.RecordExchange,
         exchange(user_id=user, user_text="m" * (8 * 1024 * 1024 + 1))),
        (stubs.llm.Complete, complete(user_id=user, message=big)),
        # The ledger takes relay batches of up to COACH_LEDGER_MAX_MESSAGE_BYTES (8 MiB).
        (stubs.ledger.RecordAnswers, record(user_id=user, model="m" * (8 * 1024 * 1024 + 1))),
    ):
        failure = await call_failure(method, request, timeout=10)
        assert failure is not None and failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED, failure
    stored = await stored_for_users(suite.env["DATABASE_URL"], user)
    assert stored == dict.fromkeys(stored, 0), stored
    # The largest valid message (4,000 four-byte characters) still fits and is answered.
    reply = await stubs.router.Chat(chat(user_id=user, message="💪" * 4000), timeout=20)
    assert reply.messages


async def test_a_request_id_reused_by_another_user_is_invalid_argument(hardened: Any) -> None:
    """A clash of idempotency keys is the caller's mistake: INVALID_ARGUMENT naming request_id,
    not UNAVAILABLE ("retry with the same request_id" could never succeed)."""
    suite, stubs = hardened
    rid = uuid.uuid4().hex
    first = await stubs.router.Chat(chat(user_id=PREFIX + "reuse-a", message="hi", request_id=rid),
                                    timeout=20)
    for text in ("hi", "I feel like giving up on my goals lately, can we talk it through?"):
        failure = await call_failure(
            stubs.router.Chat, chat(user_id=PREFIX + "reuse-b", message=text, request_id=rid), timeout=20)
        assert failure is not None and failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
        assert failure.reason == "REQUEST_ID_REUSED" and "request_id" in failure.fields, failure
    again = await stubs.router.Chat(chat(user_id=PREFIX + "reuse-a", message="hi", request_id=rid),
                                    timeout=20)
    assert list(again.messages) == list(first.messages)
    stored = await stored_for_users(suite.env["DATABASE_URL"], PREFIX + "reuse-b")
    assert stored == dict.fromkeys(stored, 0), stored
