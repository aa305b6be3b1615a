"""coach.llm.v1.LlmService: validate, proto -> domain, call a tier, domain -> proto."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc
from coach.llm.v1 import llm_service_pb2 as pb
from coach.llm.v1 import llm_service_pb2_grpc as pb_grpc
from coach.type.v1 import types_pb2

from services.common.errors import Validator
from services.common.metrics import TOKENS
from services.common.usage import Usage
from services.llm.cheap_tier import CheapTier
from services.llm.idempotency import IdempotencyCache
from services.llm.prompt_prefix import ENCODING
from services.llm.resilience import Clock, Deadline
from services.llm.stateful import StatefulApi, StatefulTier, TurnInput
from services.llm.turns import Audience, Generation, Reply, Role, Turn

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 4_000
MAX_TURN_CHARS = 8_000
MAX_TURNS = 200
MAX_SUMMARY_CHARS = 20_000
MAX_OUTPUT_TOKENS = 16_384
MAX_ID_CHARS = 128

_API_FROM_PROTO = {
    pb.STATEFUL_API_RESPONSES: StatefulApi.RESPONSES,
    pb.STATEFUL_API_ASSISTANTS: StatefulApi.ASSISTANTS,
}
_API_TO_PROTO = {api: value for value, api in _API_FROM_PROTO.items()}
# Ids the upstreams hand out: a conversation keeps the API it was created on.
_API_BY_ID_PREFIX = (("conv_", StatefulApi.RESPONSES), ("thread_", StatefulApi.ASSISTANTS))


def _api(value: pb.StatefulApi.ValueType, conversation_id: str = "") -> StatefulApi | None:
    if value in _API_FROM_PROTO:
        return _API_FROM_PROTO[value]
    for prefix, api in _API_BY_ID_PREFIX:
        if conversation_id.startswith(prefix):
            return api
    return None


def _check_turns(v: Validator, name: str, turns: Sequence[pb.ChatTurn]) -> None:
    v.check(len(turns) <= MAX_TURNS, name, f"at most {MAX_TURNS} turns")
    for index, turn in enumerate(turns[:MAX_TURNS]):
        v.check(turn.role in (pb.TURN_ROLE_USER, pb.TURN_ROLE_COACH), f"{name}[{index}].role",
                "must be TURN_ROLE_USER or TURN_ROLE_COACH")
        v.text(f"{name}[{index}].text", turn.text, max_chars=MAX_TURN_CHARS, required=True)


def _turns(turns: Sequence[pb.ChatTurn]) -> list[Turn]:
    return [Turn(Role.USER if t.role == pb.TURN_ROLE_USER else Role.COACH, t.text) for t in turns]


def _check_message(v: Validator, name: str, text: str) -> None:
    v.text(name, text, max_chars=MAX_MESSAGE_CHARS, required=True)


def _check_id(v: Validator, name: str, value: str, *, required: bool = True) -> None:
    v.text(name, value, max_chars=MAX_ID_CHARS, required=required)


def _check_audience(v: Validator, name: str, audience: pb.Audience) -> None:
    v.text(f"{name}.display_name", audience.display_name, max_chars=MAX_ID_CHARS)
    v.check(audience.current_streak >= 0, f"{name}.current_streak", "must be zero or more")


def _check_generation(v: Validator, name: str, gen: pb.Generation) -> None:
    v.check(0 <= gen.max_output_tokens <= MAX_OUTPUT_TOKENS, f"{name}.max_output_tokens",
            f"between 0 (the default) and {MAX_OUTPUT_TOKENS}")
    v.check(0.0 <= gen.temperature <= 2.0, f"{name}.temperature", "between 0 and 2")
    v.text(f"{name}.model", gen.model, max_chars=MAX_ID_CHARS)
    v.text(f"{name}.message_type", gen.message_type, max_chars=MAX_ID_CHARS)


def _usage(usage: Usage) -> types_pb2.Usage:
    return types_pb2.Usage(**usage.fields())


def _audience(audience: pb.Audience) -> Audience:
    return Audience(audience.display_name.strip()[:80], max(audience.current_streak, 0))


class LlmServicer(pb_grpc.LlmServiceServicer):
    def __init__(
        self,
        cheap: CheapTier,
        stateful: StatefulTier,
        *,
        clock: Clock,
        margin_s: float,
        budget_s: float,
        cheap_max_output_tokens: int,
        stateful_max_output_tokens: int,
        baseline_prefix_tokens: int = 0,
    ) -> None:
        self.cheap = cheap
        self.stateful = stateful
        self.clock = clock
        self.margin_s = margin_s
        self.budget_s = budget_s
        self.cheap_max_output_tokens = cheap_max_output_tokens
        self.stateful_max_output_tokens = stateful_max_output_tokens
        self.baseline_prefix_tokens = baseline_prefix_tokens
        self.answers = IdempotencyCache()

    def _deadline(self, context: grpc.aio.ServicerContext) -> Deadline:
        return Deadline.for_rpc(self.clock, context.time_remaining(),
                                margin_s=self.margin_s, budget_s=self.budget_s)

    def _generation(self, gen: pb.Generation, default_tokens: int) -> Generation:
        return Generation(
            model=gen.model.strip(),
            max_output_tokens=gen.max_output_tokens or default_tokens,
            temperature=float(gen.temperature),
            message_type=gen.message_type.strip(),
        )

    def _account(self, method: str, user_id: str, reply: Reply, started: float) -> None:
        usage = reply.usage
        for kind, value in (("input", usage.input_tokens), ("cached_input", usage.cached_input_tokens),
                            ("output", usage.output_tokens), ("reasoning", usage.reasoning_tokens),
                            ("cache_write", usage.cache_write_tokens)):
            if value:
                TOKENS.labels(reply.model, kind).inc(value)
        # DEBUG: the router logs every answer (model, tokens, cost, latency) at INFO; per-RPC
        # latency is in the metrics. This line adds the upstream's view when debugging.
        log.debug(
            "upstream answer",
            extra={"method": method, "user_id": user_id, "model": reply.model,
                   "input_tokens": usage.input_tokens, "cached_input_tokens": usage.cached_input_tokens,
                   "cache_write_tokens": usage.cache_write_tokens,
                   "service_tier": usage.service_tier, "truncated": usage.truncated,
                   "output_tokens": usage.output_tokens, "tool_calls": len(reply.tool_calls),
                   "latency_ms": round((time.monotonic() - started) * 1000, 1)},
        )

    async def Complete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteResponse:
        v = Validator()
        _check_id(v, "user_id", request.user_id, required=False)
        _check_message(v, "message", request.message)
        _check_turns(v, "history", request.history)
        _check_generation(v, "generation", request.generation)
        _check_audience(v, "audience", request.audience)
        v.raise_if_any()
        deadline, started = self._deadline(context), time.monotonic()

        async def complete() -> Reply:
            reply = await self.cheap.complete(
                request.message,
                _turns(request.history),
                _audience(request.audience),
                self._generation(request.generation, self.cheap_max_output_tokens),
                deadline,
            )
            self._account("Complete", request.user_id, reply, started)
            return reply

        # Keyed: a router that died mid-call retries (same request id) and gets this answer.
        key = f"complete:{request.user_id}:{request.request_id}" if request.request_id else None
        reply = await self.answers.run(key, complete)
        return pb.CompleteResponse(text=reply.text, model=reply.model, usage=_usage(reply.usage))

    async def CreateConversation(
        self, request: pb.CreateConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateConversationResponse:
        v = Validator()
        _check_id(v, "user_id", request.user_id)
        v.check(len(request.summary) <= MAX_SUMMARY_CHARS, "summary",
                f"at most {MAX_SUMMARY_CHARS} characters")
        _check_turns(v, "seed_turns", request.seed_turns)
        v.raise_if_any()
        backend = self.stateful.backend(_api(request.api))
        deadline = self._deadline(context)

        async def create() -> str:
            return await backend.create_conversation(
                request.user_id, request.summary, _turns(request.seed_turns), deadline
            )

        key = f"create:{request.user_id}:{request.request_id}" if request.request_id else None
        conversation_id = await self.answers.run(key, create)
        return pb.CreateConversationResponse(
            conversation_id=conversation_id, api=_API_TO_PROTO[backend.api]
        )

    async def AppendTurns(
        self, request: pb.AppendTurnsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendTurnsResponse:
        v = Validator()
        _check_id(v, "conversation_id", request.conversation_id)
        _check_turns(v, "turns", request.turns)
        v.raise_if_any()
        if not request.turns:
            return pb.AppendTurnsResponse(appended=0)  # nothing to send upstream
        backend = self.stateful.backend(_api(request.api, request.conversation_id))
        deadline = self._deadline(context)

        async def append() -> int:
            return await backend.append_turns(request.conversation_id, _turns(request.turns), deadline)

        key = f"append:{request.conversation_id}:{request.request_id}" if request.request_id else None
        appended = await self.answers.run(key, append)
        return pb.AppendTurnsResponse(appended=appended)

    async def StatefulTurn(
        self, request: pb.StatefulTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatefulTurnResponse:
        v = Validator()
        _check_id(v, "user_id", request.user_id)
        _check_id(v, "conversation_id", request.conversation_id)
        _check_message(v, "message", request.message)
        _check_generation(v, "generation", request.generation)
        _check_audience(v, "audience", request.audience)
        _check_turns(v, "prior_turns", request.prior_turns)
        v.raise_if_any()
        backend = self.stateful.backend(_api(request.api, request.conversation_id))
        deadline, started = self._deadline(context), time.monotonic()
        turn = TurnInput(
            user_id=request.user_id,
            conversation_id=request.conversation_id,
            message=request.message,
            audience=_audience(request.audience),
            generation=self._generation(request.generation, self.stateful_max_output_tokens),
            all_tools=request.all_tools,
            prior=tuple(_turns(request.prior_turns)),
        )

        async def answer() -> Reply:
            reply = await backend.stateful_turn(turn, deadline)
            self._account("StatefulTurn", request.user_id, reply, started)  # once, not per retry
            return reply

        key = f"turn:{request.conversation_id}:{request.request_id}" if request.request_id else None
        reply = await self.answers.run(key, answer)
        return pb.StatefulTurnResponse(
            texts=list(reply.texts),
            model=reply.model,
            usage=_usage(reply.usage),
            tool_calls=[
                pb.ToolCall(name=c.name, arguments_json=c.arguments_json, output_json=c.output_json)
                for c in reply.tool_calls
            ],
            response_id=reply.response_id,
        )

    async def DeleteConversation(
        self, request: pb.DeleteConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteConversationResponse:
        v = Validator()
        _check_id(v, "conversation_id", request.conversation_id)
        v.raise_if_any()
        backend = self.stateful.backend(_api(request.api, request.conversation_id))
        existed = await backend.delete_conversation(request.conversation_id, self._deadline(context))
        return pb.DeleteConversationResponse(existed=existed)

    async def Summarize(
        self, request: pb.SummarizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.SummarizeResponse:
        v = Validator()
        _check_id(v, "user_id", request.user_id, required=False)
        v.check(len(request.previous_summary) <= MAX_SUMMARY_CHARS, "previous_summary",
                f"at most {MAX_SUMMARY_CHARS} characters")
        _check_turns(v, "turns", request.turns)
        v.raise_if_any()
        if not request.turns:  # nothing new to fold in: no upstream call
            return pb.SummarizeResponse(summary=request.previous_summary, model="",
                                        usage=types_pb2.Usage())
        deadline, started = self._deadline(context), time.monotonic()

        async def summarize() -> Reply:
            reply = await self.cheap.summarize(
                request.previous_summary, _turns(request.turns), request.model.strip(), deadline,
                background=request.background,
            )
            self._account("Summarize", request.user_id, reply, started)
            return reply

        key = f"summarize:{request.user_id}:{request.request_id}" if request.request_id else None
        reply = await self.answers.run(key, summarize)
        return pb.SummarizeResponse(summary=reply.text, model=reply.model, usage=_usage(reply.usage))

    async def GetPromptPrefix(
        self, request: pb.GetPromptPrefixRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPromptPrefixResponse:
        return pb.GetPromptPrefixResponse(baseline_tokens=self.baseline_prefix_tokens,
                                          encoding=ENCODING)
