"""In-process fakes of the threads service's peers: subclasses of the generated servicers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from coach.ledger.v1 import ledger_service_pb2 as ledger_pb
from coach.ledger.v1 import ledger_service_pb2_grpc
from coach.llm.v1 import llm_service_pb2 as llm_pb
from coach.llm.v1 import llm_service_pb2_grpc
from coach.type.v1 import types_pb2

from services.common.errors import FieldViolation, InvalidArgument, Unavailable
from services.common.server import CoachServer, Registration
from services.common.settings import Env, server_settings
from tests.helpers.polling import eventually

ROLE = {llm_pb.TURN_ROLE_USER: "user", llm_pb.TURN_ROLE_COACH: "coach"}
# What the fake llm service says the baseline policy's prompt prefix costs.
PREFIX_TOKENS = 777


@dataclass
class FakeConversation:
    id: str
    user_id: str
    api: int
    summary: str
    # What the provider conversation holds, in order: (role, text).
    items: list[tuple[str, str]] = field(default_factory=list)
    seed_size: int = 0


class FakeLlm(llm_service_pb2_grpc.LlmServiceServicer):
    """Records every call. A turn can be held in the upstream: until ``turn_gate`` is set, or
    (the next turn only) until ``hold_next_turn_until()`` is true, so that what happens
    meanwhile (overlapping calls, a lost lease, a caller going away) is certain to happen."""

    def __init__(self) -> None:
        self.conversations: dict[str, FakeConversation] = {}
        self.create_calls: list[llm_pb.CreateConversationRequest] = []
        self.append_calls: list[llm_pb.AppendTurnsRequest] = []
        self.turn_calls: list[llm_pb.StatefulTurnRequest] = []
        self.summarize_calls: list[llm_pb.SummarizeRequest] = []
        # Background (flex) Summarize calls answer RESOURCE_EXHAUSTED while this is set.
        self.refuse_background = False
        self.refused_background = 0
        self.delete_calls: list[llm_pb.DeleteConversationRequest] = []
        self.deleted: set[str] = set()  # conversations deleted upstream (kept for inspection)
        self.refuse_delete: set[str] = set()  # DeleteConversation answers INVALID_ARGUMENT
        # When set, each DeleteConversation waits (up to gate_timeout_s) until this many are
        # in flight at once; the most seen at once is kept.
        self.delete_gate_at: int | None = None
        self.deletes_in_flight = 0
        self.max_deletes_in_flight = 0
        self._deletes_gate = asyncio.Event()
        self.turn_gate: asyncio.Event | None = None
        self.hold_next_turn_until: Callable[[], bool] | None = None
        self.active_turns: Counter[str] = Counter()
        self.max_concurrency: Counter[str] = Counter()
        self.active_per_user: Counter[str] = Counter()
        self.max_per_user: Counter[str] = Counter()
        # StatefulTurn calls in flight right now, all users together, and the most seen.
        self.in_flight = 0
        self.max_in_flight = 0
        # When set, each StatefulTurn waits (up to gate_timeout_s) until this many are in
        # flight at once: proves that many can be, whatever the machine's speed.
        self.turn_gate_at: int | None = None
        self.gate_timeout_s = 10.0
        self._gate_open = asyncio.Event()
        # method name -> how many next calls fail with UNAVAILABLE
        self.failures: Counter[str] = Counter()
        # When set, CreateConversation waits on it (to cancel a rotation midway).
        self.create_gate: asyncio.Event | None = None
        self.create_entered = asyncio.Event()

    async def _together(self, gate: asyncio.Event, in_flight: int, at: int | None) -> None:
        """With ``at`` set, waits (up to gate_timeout_s) until that many calls of one kind are
        in flight at once (``in_flight`` counts this one)."""
        if at is None:
            return
        if in_flight >= at:
            gate.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gate.wait(), self.gate_timeout_s)

    def _maybe_fail(self, method: str) -> None:
        if self.failures[method] > 0:
            self.failures[method] -= 1
            raise Unavailable(f"fake llm: {method} is down", reason="UPSTREAM_UNAVAILABLE")

    async def CreateConversation(
        self, request: llm_pb.CreateConversationRequest, context: grpc.aio.ServicerContext
    ) -> llm_pb.CreateConversationResponse:
        self.create_calls.append(request)
        conv_id = f"conv_{len(self.create_calls)}"
        self.create_entered.set()
        if self.create_gate is not None:
            await self.create_gate.wait()
        self._maybe_fail("CreateConversation")
        items = [(ROLE[t.role], t.text) for t in request.seed_turns]
        self.conversations[conv_id] = FakeConversation(conv_id, request.user_id, request.api, request.summary,
                                                       items, len(items))
        return llm_pb.CreateConversationResponse(conversation_id=conv_id, api=request.api)

    async def AppendTurns(
        self, request: llm_pb.AppendTurnsRequest, context: grpc.aio.ServicerContext
    ) -> llm_pb.AppendTurnsResponse:
        self._maybe_fail("AppendTurns")
        self.append_calls.append(request)
        conv = self.conversations[request.conversation_id]
        conv.items.extend((ROLE[t.role], t.text) for t in request.turns)
        return llm_pb.AppendTurnsResponse(appended=len(request.turns))

    async def StatefulTurn(
        self, request: llm_pb.StatefulTurnRequest, context: grpc.aio.ServicerContext
    ) -> llm_pb.StatefulTurnResponse:
        conv_id, user = request.conversation_id, request.user_id
        self.active_turns[conv_id] += 1
        self.active_per_user[user] += 1
        self.max_concurrency[conv_id] = max(self.max_concurrency[conv_id], self.active_turns[conv_id])
        self.max_per_user[user] = max(self.max_per_user[user], self.active_per_user[user])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._together(self._gate_open, self.in_flight, self.turn_gate_at)
            if self.hold_next_turn_until is not None:
                until, self.hold_next_turn_until = self.hold_next_turn_until, None
                await eventually(until, what="the held turn's condition")
            if self.turn_gate is not None:
                await self.turn_gate.wait()
            self._maybe_fail("StatefulTurn")
            self.turn_calls.append(request)
            conv = self.conversations[conv_id]
            conv.items.extend((ROLE[t.role], t.text) for t in request.prior_turns)
            reply = f"coach: {request.message}"
            held = len(conv.items)
            conv.items.extend([("user", request.message), ("coach", reply)])
            tool_calls = []
            if request.message.startswith("goal:"):
                goal = request.message.removeprefix("goal:").strip()
                tool_calls.append(llm_pb.ToolCall(
                    name="save_goal",
                    arguments_json=json.dumps({"goal": goal, "deadline": "2030-01-01"}),
                    output_json='{"saved": true}'))
            return llm_pb.StatefulTurnResponse(
                texts=[reply],
                model=request.generation.model or "gpt-5.4",
                usage=types_pb2.Usage(input_tokens=100 + 10 * held, output_tokens=12),
                tool_calls=tool_calls,
                response_id=f"resp_{len(self.turn_calls)}",
            )
        finally:
            self.in_flight -= 1
            self.active_turns[conv_id] -= 1
            self.active_per_user[user] -= 1

    async def Summarize(
        self, request: llm_pb.SummarizeRequest, context: grpc.aio.ServicerContext
    ) -> llm_pb.SummarizeResponse:
        self._maybe_fail("Summarize")
        if request.background and self.refuse_background:
            self.refused_background += 1
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "the flex tier has no capacity (fake)")
        self.summarize_calls.append(request)
        folded = len(request.turns)
        previous = int(request.previous_summary.split()[-2]) if request.previous_summary else 0
        return llm_pb.SummarizeResponse(
            summary=f"summary of {previous + folded} messages",
            model=request.model,
            usage=types_pb2.Usage(input_tokens=50 + 5 * folded, output_tokens=30,
                                  service_tier="flex" if request.background else "default"),
        )

    async def GetPromptPrefix(
        self, request: llm_pb.GetPromptPrefixRequest, context: grpc.aio.ServicerContext
    ) -> llm_pb.GetPromptPrefixResponse:
        return llm_pb.GetPromptPrefixResponse(baseline_tokens=PREFIX_TOKENS, encoding="o200k_base")

    async def DeleteConversation(
        self, request: llm_pb.DeleteConversationRequest, context: grpc.aio.ServicerContext
    ) -> llm_pb.DeleteConversationResponse:
        self._maybe_fail("DeleteConversation")
        self.deletes_in_flight += 1
        self.max_deletes_in_flight = max(self.max_deletes_in_flight, self.deletes_in_flight)
        try:
            await self._together(self._deletes_gate, self.deletes_in_flight, self.delete_gate_at)
        finally:
            self.deletes_in_flight -= 1
        self.delete_calls.append(request)
        if request.conversation_id in self.refuse_delete:
            raise InvalidArgument("fake llm: the upstream refused", reason="UPSTREAM_REJECTED")
        existed = (request.conversation_id in self.conversations
                   and request.conversation_id not in self.deleted)
        self.deleted.add(request.conversation_id)
        return llm_pb.DeleteConversationResponse(existed=existed)


class FakeLedger(ledger_service_pb2_grpc.LedgerServiceServicer):
    """Counts each request_id once (like the real ledger); ``down`` makes it UNAVAILABLE."""

    def __init__(self) -> None:
        self.down = False
        self.records: dict[str, ledger_pb.AnswerRecord] = {}
        self.deliveries: Counter[str] = Counter()
        self.calls = 0
        self.batch_sizes: list[int] = []
        # request_ids the fake refuses as invalid (as the real ledger refuses a bad record)
        self.refuse: set[str] = set()

    async def RecordAnswers(
        self, request: ledger_pb.RecordAnswersRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb.RecordAnswersResponse:
        self.calls += 1
        if self.down:
            raise Unavailable("fake ledger is down", reason="LEDGER_DOWN")
        self.batch_sizes.append(len(request.records))
        bad = [i for i, r in enumerate(request.records) if r.request_id in self.refuse]
        if bad:
            raise InvalidArgument("bad record", violations=[
                FieldViolation(f"records[{i}].request_id", "refused by the fake") for i in bad])
        recorded = duplicates = 0
        for record in request.records:
            self.deliveries[record.request_id] += 1
            if record.request_id in self.records:
                duplicates += 1
            else:
                self.records[record.request_id] = record
                recorded += 1
        return ledger_pb.RecordAnswersResponse(recorded=recorded, duplicates=duplicates)

    def for_user(self, user_id: str) -> list[ledger_pb.AnswerRecord]:
        return [r for r in self.records.values() if r.user_id == user_id]


async def serve_fake(name: str, servicer: object) -> CoachServer:
    settings = server_settings(Env({f"COACH_{name.upper()}_LISTEN": "127.0.0.1:0",
                                    f"COACH_{name.upper()}_METRICS_PORT": "0"}), name)
    if name == "llm":
        reg = Registration(llm_service_pb2_grpc.add_LlmServiceServicer_to_server, servicer,
                           llm_pb.DESCRIPTOR.services_by_name["LlmService"].full_name)
    else:
        reg = Registration(ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server, servicer,
                           ledger_pb.DESCRIPTOR.services_by_name["LedgerService"].full_name)
    server = CoachServer(settings, [reg])
    await server.start()
    return server


def per_user(calls: list, user_id: str) -> list:  # type: ignore[type-arg]
    return [c for c in calls if c.user_id == user_id]


def conversations_of(llm: FakeLlm, user_id: str) -> list[FakeConversation]:
    return [c for c in llm.conversations.values() if c.user_id == user_id]
