"""The router's peers over gRPC: proto <-> domain mapping, nothing else.

Upstream trouble (the llm service or the provider behind it failing, slow or
rate-limited) becomes ``UpstreamFailure`` so the answering flow can fall back;
trouble with our own storage becomes ``Unavailable`` so the caller retries
with the same request id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
from coach.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from coach.llm.v1 import llm_service_pb2, llm_service_pb2_grpc
from coach.threads.v1 import threads_service_pb2, threads_service_pb2_grpc
from coach.type.v1 import types_pb2
from google.protobuf import timestamp_pb2

from services.common.errors import (
    CoachError,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.common.exchange import Exchange, UserState
from services.common.rich_status import error_from_rpc
from services.common.usage import Charge, Usage
from services.common.vocabulary import COACH, USER, MessageType, Route, Turn
from services.router.answering import UpstreamFailure
from services.router.journal import BatchOutcome
from services.router.ports import (
    AnswerClaim,
    BegunAnswer,
    Completion,
    CompletionInput,
    StatefulTurnInput,
    UserContextIn,
)
from services.router.user_cache import Change

REQUEST_ID_REUSED = "REQUEST_ID_REUSED"  # threads: the request_id belongs to another user
REQUEST_IN_PROGRESS = "REQUEST_IN_PROGRESS"  # threads: another replica is answering it
# threads: the user's earlier answers given by another replica are not stored yet
USER_ANSWERS_PENDING = "USER_ANSWERS_PENDING"

# Status codes of an upstream call that mean "answer with a fallback".
_UPSTREAM_TROUBLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INVALID_ARGUMENT,
}


def storage_error(exc: grpc.aio.AioRpcError, what: str) -> CoachError:
    code, reason, violations = error_from_rpc(exc)
    if reason == REQUEST_ID_REUSED:  # the caller's key clashes: retrying cannot help
        return InvalidArgument(
            "request_id was already used for another user's message; use a fresh one",
            reason=REQUEST_ID_REUSED,
            violations=[FieldViolation("request_id", "already used for another user's message")],
        )
    if reason in (REQUEST_IN_PROGRESS, USER_ANSWERS_PENDING):  # another replica: retry
        return Unavailable(exc.details() or what, reason=reason, retry_after_s=0.5)
    if code == "INVALID_ARGUMENT":
        return InvalidArgument(exc.details() or what, reason=reason or "INVALID_ARGUMENT",
                               violations=violations)
    if code == "RESOURCE_EXHAUSTED":
        return ResourceExhausted(exc.details() or what, reason=reason or "RESOURCE_EXHAUSTED")
    return Unavailable(
        f"{what} is unavailable right now; retry with the same request_id",
        reason="STORAGE_UNAVAILABLE",
        metadata={"peer_code": code, "peer_reason": reason},
        retry_after_s=1.0,
    )


# -- proto <-> domain ---------------------------------------------------------------

def usage_to_proto(usage: Usage) -> types_pb2.Usage:
    return types_pb2.Usage(**usage.fields())


def route_to_proto(route: Route) -> types_pb2.Route.ValueType:
    return types_pb2.Route.ValueType(route.value)


def route_from_proto(value: int) -> Route:
    return Route(value)


def type_to_proto(message_type: MessageType) -> types_pb2.MessageType.ValueType:
    return types_pb2.MessageType.ValueType(message_type.value)


def type_from_proto(value: int) -> MessageType:
    return MessageType(value)


def turn_from_proto(turn: types_pb2.Turn) -> Turn:
    return Turn(COACH if turn.role == types_pb2.ROLE_COACH else USER, turn.text)


def context_to_proto(context: UserContextIn) -> types_pb2.UserContext:
    proto = types_pb2.UserContext(
        display_name=context.display_name,
        current_streak=context.current_streak,
        timezone=context.timezone,
    )
    if context.local_hour is not None:
        proto.local_hour = context.local_hour
    return proto


def answer_to_proto(answer: Exchange) -> threads_service_pb2.Exchange:
    return threads_service_pb2.Exchange(
        request_id=answer.request_id,
        user_id=answer.user_id,
        user_text=answer.user_text,
        coach_texts=list(answer.coach_texts),
        route=route_to_proto(answer.route),
        message_type=type_to_proto(answer.message_type),
        pattern=answer.pattern,
        model=answer.model,
        charges=[types_pb2.Charge(**c.fields()) for c in answer.charges],
        conversation_id=answer.conversation_id,
        latency_ms=answer.latency_ms,
        create_time=timestamp_pb2.Timestamp(),
    )


def answer_from_proto(exchange: threads_service_pb2.Exchange) -> Exchange:
    return Exchange(
        request_id=exchange.request_id,
        user_id=exchange.user_id,
        user_text=exchange.user_text,
        coach_texts=tuple(exchange.coach_texts),
        route=route_from_proto(exchange.route),
        message_type=type_from_proto(exchange.message_type),
        pattern=exchange.pattern,
        model=exchange.model,
        charges=tuple(
            Charge.of(c) for c in exchange.charges
        ),
        conversation_id=exchange.conversation_id,
        latency_ms=exchange.latency_ms,
    )


# -- clients ------------------------------------------------------------------------

class GrpcThreads:
    def __init__(self, channel: grpc.aio.Channel, *, origin: str, holder: str = "") -> None:
        self.stub = threads_service_pb2_grpc.ThreadsServiceStub(channel)
        # Written on every write, so this router can tell its own changes from others'.
        self.origin = origin
        # This router in its claims, the same across its restarts (see abandon_stale_claims).
        self.holder = holder or origin

    async def user_state(self, user_id: str, request_id: str, recent: int, timeout: float) -> UserState:
        try:
            reply = await self.stub.GetUserState(
                threads_service_pb2.GetUserStateRequest(
                    user_id=user_id, recent_turns=recent, request_id=request_id
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise storage_error(exc, "the conversation store") from exc
        return UserState(
            message_count=reply.message_count,
            recent_turns=tuple(turn_from_proto(t) for t in reply.recent_turns),
            existing=answer_from_proto(reply.existing) if reply.HasField("existing") else None,
            messages_today=reply.messages_today,
            last_canned_reply=reply.last_canned_reply,
        )

    async def begin_answer(self, claim: AnswerClaim, recent: int, timeout: float) -> BegunAnswer:
        try:
            reply = await self.stub.BeginAnswer(
                threads_service_pb2.BeginAnswerRequest(
                    user_id=claim.user_id, request_id=claim.request_id, holder=self.holder,
                    claim_token=claim.token, lease_ms=max(int(claim.lease_s * 1000), 1),
                    wait_ms=int(claim.wait_s * 1000), recent_turns=recent,
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise storage_error(exc, "the conversation store") from exc
        if reply.HasField("existing"):
            return BegunAnswer(answer_from_proto(reply.existing), 0)
        state = None
        if recent > 0:
            state = UserState(
                message_count=reply.message_count,
                recent_turns=tuple(turn_from_proto(t) for t in reply.recent_turns),
                existing=None,
                messages_today=reply.messages_today,
                last_canned_reply=reply.last_canned_reply,
            )
        return BegunAnswer(None, reply.message_count, state,
                           tuple(Charge.of(c) for c in reply.owed))

    async def abandon_answer(self, claim: AnswerClaim, timeout: float) -> None:
        try:
            await self.stub.AbandonAnswer(
                threads_service_pb2.AbandonAnswerRequest(request_id=claim.request_id,
                                                         claim_token=claim.token),
                timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise storage_error(exc, "the conversation store") from exc

    async def abandon_stale_claims(self, current_token_prefix: str, timeout: float) -> int:
        """Gives back the unanswered claims this router's earlier process left (it died)."""
        try:
            reply = await self.stub.AbandonStaleClaims(
                threads_service_pb2.AbandonStaleClaimsRequest(
                    holder=self.holder, current_token_prefix=current_token_prefix),
                timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise storage_error(exc, "the conversation store") from exc
        return int(reply.abandoned)

    async def record_batch(self, answers: Sequence[Exchange], timeout: float) -> list[BatchOutcome]:
        """The journal's sink: stores answers in order, one transaction for the batch."""
        request = threads_service_pb2.RecordExchangesRequest(
            exchanges=[answer_to_proto(a) for a in answers], origin=self.origin
        )
        try:
            reply = await self.stub.RecordExchanges(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise storage_error(exc, "the conversation store") from exc
        return [BatchOutcome(r.request_id, r.rejected_reason, r.rejected_message)
                for r in reply.results]

    async def changes(self) -> AsyncIterator[Change]:
        """threads' WatchUserChanges: the first change (no user) says the stream is live."""
        call = self.stub.WatchUserChanges(
            threads_service_pb2.WatchUserChangesRequest(origin=self.origin))
        try:
            async for message in call:
                yield Change(message.user_id, message.origin)
        except grpc.aio.AioRpcError as exc:
            raise storage_error(exc, "the conversation store's change stream") from exc
        finally:
            call.cancel()

    async def stateful_turn(self, turn: StatefulTurnInput, timeout: float) -> Exchange:
        decision = turn.decision
        request = threads_service_pb2.RunStatefulTurnRequest(
            request_id=turn.request_id,
            user_id=turn.user_id,
            message=turn.message,
            message_type=type_to_proto(decision.message_type),
            context=context_to_proto(turn.context),
            model=decision.model,
            max_output_tokens=decision.max_output_tokens,
            temperature=decision.temperature,
            baseline=turn.baseline,
            origin=self.origin,
        )
        try:
            reply = await self.stub.RunStatefulTurn(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            _, reason, _ = error_from_rpc(exc)
            if (exc.code() in _UPSTREAM_TROUBLE and exc.code() != grpc.StatusCode.INVALID_ARGUMENT
                    and reason != REQUEST_ID_REUSED):
                raise UpstreamFailure(reason or exc.code().name, exc.details() or "") from exc
            raise storage_error(exc, "the conversation store") from exc
        return answer_from_proto(reply.exchange)


class GrpcLlm:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = llm_service_pb2_grpc.LlmServiceStub(channel)

    async def complete(self, request: CompletionInput, timeout: float) -> Completion:
        decision = request.decision
        proto = llm_service_pb2.CompleteRequest(
            request_id=request.request_id,
            user_id=request.user_id,
            message=request.message,
            history=[
                llm_service_pb2.ChatTurn(
                    role=llm_service_pb2.TURN_ROLE_COACH if t.role == COACH else llm_service_pb2.TURN_ROLE_USER,
                    text=t.text,
                )
                for t in request.history
            ],
            audience=llm_service_pb2.Audience(
                display_name=request.context.display_name,
                current_streak=request.context.current_streak,
            ),
            generation=llm_service_pb2.Generation(
                model=decision.model,
                max_output_tokens=decision.max_output_tokens,
                temperature=decision.temperature,
                message_type=decision.message_type.proto_name,
            ),
        )
        try:
            reply = await self.stub.Complete(proto, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            _, reason, _ = error_from_rpc(exc)
            raise UpstreamFailure(reason or exc.code().name, exc.details() or "") from exc
        return Completion(reply.text, reply.model or decision.model, Usage.of(reply.usage))


class GrpcLedger:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = ledger_service_pb2_grpc.LedgerServiceStub(channel)

    async def budget_exceeded(self, user_id: str, timeout: float) -> str | None:
        try:
            reply = await self.stub.CheckUserLimits(
                ledger_service_pb2.CheckUserLimitsRequest(user_id=user_id), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise storage_error(exc, "the ledger") from exc
        return (reply.message or reply.exceeded) if reply.exceeded else None
