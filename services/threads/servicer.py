"""ThreadsService over gRPC: validate, proto -> domain -> proto. No rules, no SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import grpc
from coach.threads.v1 import threads_service_pb2 as pb
from coach.threads.v1 import threads_service_pb2_grpc
from coach.type.v1 import types_pb2

from services.common.errors import CoachError, InvalidArgument, Validator
from services.common.exchange import Exchange
from services.common.usage import Charge
from services.common.vocabulary import COACH, MessageType, Role, Route, Turn
from services.threads.answer_claims import AnswerClaims, BeginAnswer
from services.threads.history import History
from services.threads.ports import TurnSettings
from services.threads.records import StoredExchange
from services.threads.stateful_turn import StatefulTurnRequest, StatefulTurns
from services.threads.user_changes import UserChanges

MAX_USER_ID = 128
MAX_REQUEST_ID = 128
MAX_MESSAGE_CHARS = 4000
MAX_COACH_TEXT_CHARS = 16000
MAX_NAME_CHARS = 256  # pattern, model, conversation id, charge purpose
MAX_DISPLAY_NAME = 128

def _role_pb(role: Role) -> types_pb2.Role.ValueType:
    return types_pb2.ROLE_COACH if role == COACH else types_pb2.ROLE_USER


def _timestamp(value: datetime | None, target: object) -> None:
    if value is not None:
        target.FromDatetime(value)  # type: ignore[attr-defined]


def exchange_pb(exchange: Exchange) -> pb.Exchange:
    message = pb.Exchange(
        request_id=exchange.request_id,
        user_id=exchange.user_id,
        user_text=exchange.user_text,
        coach_texts=list(exchange.coach_texts),
        route=types_pb2.Route.ValueType(exchange.route.value),
        message_type=types_pb2.MessageType.ValueType(exchange.message_type.value),
        pattern=exchange.pattern,
        model=exchange.model,
        charges=[types_pb2.Charge(**c.fields()) for c in exchange.charges],
        conversation_id=exchange.conversation_id,
        latency_ms=exchange.latency_ms,
    )
    _timestamp(exchange.created_at, message.create_time)
    return message


def _turn_pb(turn: Turn) -> types_pb2.Turn:
    return types_pb2.Turn(role=_role_pb(turn.role), text=turn.text)


def _check_user_id(v: Validator, user_id: str, field: str = "user_id") -> None:
    v.text(field, user_id, max_chars=MAX_USER_ID, required=True)


def _check_request_id(v: Validator, request_id: str, field: str = "request_id") -> None:
    v.check(bool(request_id.strip()), field, "required: the idempotency key of this write")
    v.text(field, request_id, max_chars=MAX_REQUEST_ID)


def _check_message(v: Validator, text: str, field: str) -> None:
    v.text(field, text, max_chars=MAX_MESSAGE_CHARS, required=True)


def _check_enum(v: Validator, enum: object, value: int, field: str) -> None:
    valid = value in enum.values() and value != 0  # type: ignore[attr-defined]
    v.check(valid, field, "required: one of the named values")


def _check_context(v: Validator, context: types_pb2.UserContext, field: str = "context") -> None:
    v.text(f"{field}.display_name", context.display_name, max_chars=MAX_DISPLAY_NAME)
    v.check(context.current_streak >= 0, f"{field}.current_streak", "must be zero or more")
    v.text(f"{field}.timezone", context.timezone, max_chars=MAX_NAME_CHARS)
    if context.HasField("local_hour"):
        v.check(0 <= context.local_hour <= 23, f"{field}.local_hour", "must be between 0 and 23")


def exchange_from_pb(message: pb.Exchange) -> Exchange:
    v = Validator()
    _check_request_id(v, message.request_id, "exchange.request_id")
    _check_user_id(v, message.user_id, "exchange.user_id")
    _check_message(v, message.user_text, "exchange.user_text")
    v.check(len(message.coach_texts) > 0, "exchange.coach_texts", "at least one reply")
    v.check(sum(len(t) for t in message.coach_texts) <= MAX_COACH_TEXT_CHARS,
            "exchange.coach_texts", f"at most {MAX_COACH_TEXT_CHARS} characters in all")
    v.check(not any("\x00" in t for t in message.coach_texts), "exchange.coach_texts",
            "must not contain NUL characters")
    for name in ("pattern", "model", "conversation_id"):
        v.text(f"exchange.{name}", getattr(message, name), max_chars=MAX_NAME_CHARS)
    _check_enum(v, types_pb2.Route, message.route, "exchange.route")
    _check_enum(v, types_pb2.MessageType, message.message_type, "exchange.message_type")
    v.check(message.latency_ms >= 0, "exchange.latency_ms", "must not be negative")
    for i, c in enumerate(message.charges):
        u = c.usage
        v.tokens(f"exchange.charges[{i}].usage", u.input_tokens, u.cached_input_tokens,
                 u.output_tokens, u.reasoning_tokens, u.cache_write_tokens)
        # The ledger refuses these too: stored here, the record would wait in the outbox forever.
        v.check(u.cached_input_tokens <= u.input_tokens, f"exchange.charges[{i}].usage",
                "cached input tokens are part of input tokens: must not exceed them")
        v.check(u.cached_input_tokens > u.input_tokens  # reported once, above
                    or u.cached_input_tokens + u.cache_write_tokens <= u.input_tokens,
                f"exchange.charges[{i}].usage",
                "cached and cache-write tokens are parts of input tokens: must not exceed them")
        v.text(f"exchange.charges[{i}].usage.service_tier", u.service_tier,
               max_chars=MAX_NAME_CHARS)
        v.check(u.reasoning_tokens <= u.output_tokens, f"exchange.charges[{i}].usage",
                "reasoning tokens are part of output tokens: must not exceed them")
        v.text(f"exchange.charges[{i}].model", c.model, max_chars=MAX_NAME_CHARS)
        v.text(f"exchange.charges[{i}].purpose", c.purpose, max_chars=MAX_NAME_CHARS)
    v.raise_if_any()
    return Exchange(
        request_id=message.request_id,
        user_id=message.user_id,
        user_text=message.user_text,
        coach_texts=tuple(message.coach_texts),
        route=Route(message.route),
        message_type=MessageType(message.message_type),
        pattern=message.pattern,
        model=message.model,
        charges=tuple(Charge.of(c) for c in message.charges),
        conversation_id=message.conversation_id,
        latency_ms=message.latency_ms,
    )


def _stored(stored: StoredExchange) -> tuple[pb.Exchange, bool]:
    return exchange_pb(stored.exchange), stored.created


MAX_BATCH = 1000


class ThreadsServicer(threads_service_pb2_grpc.ThreadsServiceServicer):
    def __init__(self, history: History, turns: StatefulTurns, changes: UserChanges,
                 claims: AnswerClaims) -> None:
        self.history = history
        self.turns = turns
        self.changes = changes
        self.claims = claims

    async def GetUserState(
        self, request: pb.GetUserStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUserStateResponse:
        v = Validator()
        _check_user_id(v, request.user_id)
        v.check(request.recent_turns >= 0, "recent_turns", "must not be negative")
        v.text("request_id", request.request_id, max_chars=MAX_REQUEST_ID)
        v.raise_if_any()
        state = await self.history.user_state(request.user_id, request.recent_turns,
                                              request.request_id)
        response = pb.GetUserStateResponse(
            message_count=state.message_count,
            recent_turns=[_turn_pb(t) for t in state.recent_turns],
            messages_today=state.messages_today,
            last_canned_reply=state.last_canned_reply,
        )
        if state.existing is not None:
            response.existing.CopyFrom(exchange_pb(state.existing))
        return response

    async def BeginAnswer(
        self, request: pb.BeginAnswerRequest, context: grpc.aio.ServicerContext
    ) -> pb.BeginAnswerResponse:
        v = Validator()
        _check_user_id(v, request.user_id)
        _check_request_id(v, request.request_id)
        v.text("holder", request.holder, max_chars=MAX_NAME_CHARS)
        v.text("claim_token", request.claim_token, max_chars=MAX_NAME_CHARS, required=True)
        v.check(request.lease_ms > 0, "lease_ms", "must be positive")
        v.check(request.wait_ms >= 0, "wait_ms", "must not be negative")
        v.check(request.recent_turns >= 0, "recent_turns", "must not be negative")
        v.raise_if_any()
        remaining = context.time_remaining()
        wait_s = request.wait_ms / 1000
        if remaining is not None:
            wait_s = min(wait_s, max(remaining - 0.05, 0.0))
        begun = await self.claims.begin(BeginAnswer(
            user_id=request.user_id, request_id=request.request_id, holder=request.holder,
            token=request.claim_token, lease_s=request.lease_ms / 1000, wait_s=wait_s,
            recent_turns=request.recent_turns))
        response = pb.BeginAnswerResponse(message_count=begun.message_count)
        if begun.existing is not None:
            response.existing.CopyFrom(exchange_pb(begun.existing))
        if begun.state is not None:
            response.recent_turns.extend(_turn_pb(t) for t in begun.state.recent_turns)
            response.messages_today = begun.state.messages_today
            response.last_canned_reply = begun.state.last_canned_reply
        response.owed.extend(types_pb2.Charge(**c.fields()) for c in begun.owed)
        return response

    async def AbandonAnswer(
        self, request: pb.AbandonAnswerRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbandonAnswerResponse:
        v = Validator()
        _check_request_id(v, request.request_id)
        v.text("claim_token", request.claim_token, max_chars=MAX_NAME_CHARS, required=True)
        v.raise_if_any()
        await self.claims.abandon(request.request_id, request.claim_token)
        return pb.AbandonAnswerResponse()

    async def AbandonStaleClaims(
        self, request: pb.AbandonStaleClaimsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbandonStaleClaimsResponse:
        v = Validator()
        v.text("holder", request.holder, max_chars=MAX_NAME_CHARS, required=True)
        v.text("current_token_prefix", request.current_token_prefix, max_chars=MAX_NAME_CHARS,
               required=True)
        v.raise_if_any()
        abandoned = await self.claims.abandon_stale(request.holder, request.current_token_prefix)
        return pb.AbandonStaleClaimsResponse(abandoned=abandoned)

    async def RecordExchange(
        self, request: pb.RecordExchangeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordExchangeResponse:
        v = Validator()
        v.text("origin", request.origin, max_chars=MAX_NAME_CHARS)
        v.raise_if_any()
        stored = await self.history.record_exchange(exchange_from_pb(request.exchange),
                                                    request.origin)
        exchange, created = _stored(stored)
        return pb.RecordExchangeResponse(exchange=exchange, created=created)

    async def RecordExchanges(
        self, request: pb.RecordExchangesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordExchangesResponse:
        v = Validator()
        v.check(len(request.exchanges) <= MAX_BATCH, "exchanges", f"at most {MAX_BATCH} per call")
        v.text("origin", request.origin, max_chars=MAX_NAME_CHARS)
        v.raise_if_any()
        # An invalid exchange is reported on its own: it must not hold the others back.
        slots: list[pb.RecordedExchange] = []
        valid: list[tuple[int, Exchange]] = []
        for i, message in enumerate(request.exchanges):
            slots.append(pb.RecordedExchange(request_id=message.request_id))
            try:
                valid.append((i, exchange_from_pb(message)))
            except InvalidArgument as err:
                slots[i].rejected_reason = err.reason
                slots[i].rejected_message = "; ".join(
                    f"{f.field}: {f.description}" for f in err.violations) or err.message
        results = await self.history.record_exchanges([e for _, e in valid], request.origin)
        for (i, _), result in zip(valid, results, strict=True):
            slots[i].created = result.created
            slots[i].rejected_reason = result.rejected_reason
            slots[i].rejected_message = result.rejected_message
        return pb.RecordExchangesResponse(results=slots)

    async def WatchUserChanges(
        self, request: pb.WatchUserChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchUserChangesResponse]:
        try:
            v = Validator()
            v.text("origin", request.origin, max_chars=MAX_NAME_CHARS)
            v.raise_if_any()
            async with self.changes.watch(request.origin) as watcher:
                yield pb.WatchUserChangesResponse()  # live: the watcher may trust its cache
                async for change in watcher:
                    yield pb.WatchUserChangesResponse(user_id=change.user_id, origin=change.origin)
        except CoachError as err:  # streams are not wrapped by the error interceptor
            await context.abort(grpc.StatusCode[err.code], err.message)

    async def RunStatefulTurn(
        self, request: pb.RunStatefulTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunStatefulTurnResponse:
        v = Validator()
        _check_request_id(v, request.request_id)
        _check_user_id(v, request.user_id)
        _check_message(v, request.message, "message")
        _check_enum(v, types_pb2.MessageType, request.message_type, "message_type")
        v.check(request.max_output_tokens >= 0, "max_output_tokens", "must not be negative")
        v.check(0.0 <= request.temperature <= 2.0, "temperature", "between 0 and 2")
        v.text("model", request.model, max_chars=MAX_NAME_CHARS)
        v.text("origin", request.origin, max_chars=MAX_NAME_CHARS)
        _check_context(v, request.context)
        v.raise_if_any()
        message_type = MessageType(request.message_type)
        stored = await self.turns.run(
            StatefulTurnRequest(
                request_id=request.request_id,
                user_id=request.user_id,
                message=request.message,
                message_type=message_type,
                settings=TurnSettings(
                    model=request.model,
                    max_output_tokens=request.max_output_tokens,
                    temperature=request.temperature,
                    message_type=message_type,
                    display_name=request.context.display_name,
                    current_streak=request.context.current_streak,
                    all_tools=request.baseline,
                ),
                baseline=request.baseline,
                time_remaining_s=context.time_remaining(),
                origin=request.origin,
            )
        )
        exchange, created = _stored(stored)
        return pb.RunStatefulTurnResponse(exchange=exchange, created=created)

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMessagesResponse:
        v = Validator()
        _check_user_id(v, request.user_id)
        v.check(request.page_size >= 0, "page_size", "must not be negative")
        v.raise_if_any()
        page = await self.history.list_messages(request.user_id, request.page_size,
                                                request.page_token)
        response = pb.ListMessagesResponse(next_page_token=page.next_page_token)
        for m in page.messages:
            stored = response.messages.add(
                request_id=m.request_id,
                role=_role_pb(m.role),
                text=m.text,
                route=types_pb2.Route.ValueType(m.route.value),
                message_type=types_pb2.MessageType.ValueType(m.message_type.value),
                model=m.model,
            )
            stored.create_time.FromDatetime(m.created_at)
        return response

    async def CountMessages(
        self, request: pb.CountMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountMessagesResponse:
        v = Validator()
        _check_user_id(v, request.user_id)
        v.raise_if_any()
        return pb.CountMessagesResponse(count=await self.history.count_messages(request.user_id))

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConversationResponse:
        v = Validator()
        _check_user_id(v, request.user_id)
        v.raise_if_any()
        view = await self.history.conversation(request.user_id)
        response = pb.GetConversationResponse(generation=view.generation)
        if view.conversation is not None:
            c = view.conversation
            response.conversation_id = c.provider_conversation_id
            response.api = c.api
            response.summary = c.summary
            response.turns_in_window = c.turns_in_window
        return response
