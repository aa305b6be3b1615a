"""RouterService over gRPC: validate, map proto -> domain -> proto. No rules here."""

from __future__ import annotations

import grpc
from coach.router.v1 import router_service_pb2, router_service_pb2_grpc
from coach.type.v1 import types_pb2

from services.router.answering import ChatInput, ChatService, UserContextIn
from services.router.peers import route_to_proto, turn_from_proto, type_to_proto, usage_to_proto
from services.router.validation import check_chat, check_classify

_ROLES: set[int] = {int(types_pb2.ROLE_USER), int(types_pb2.ROLE_COACH)}


def _context(proto: types_pb2.UserContext) -> UserContextIn:
    return UserContextIn(
        display_name=proto.display_name,
        current_streak=proto.current_streak,
        local_hour=proto.local_hour if proto.HasField("local_hour") else None,
        timezone=proto.timezone,
    )


class RouterServicer(router_service_pb2_grpc.RouterServiceServicer):
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    async def Chat(
        self, request: router_service_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> router_service_pb2.ChatResponse:
        user = _context(request.context)
        check_chat(request.user_id, request.message, request.request_id, request.response_type,
                   user.display_name, user.current_streak, user.local_hour, user.timezone)
        result = await self.chat.chat(
            ChatInput(request.user_id, request.message, request.request_id, user, request.response_type),
            context.time_remaining(),
        )
        answer = result.answer
        return router_service_pb2.ChatResponse(
            messages=list(answer.coach_texts),
            route=route_to_proto(answer.route),
            message_type=type_to_proto(answer.message_type),
            pattern=answer.pattern,
            model=answer.model,
            usage=usage_to_proto(answer.answer_usage),
            cost_usd_nanos=result.cost_usd_nanos,
            conversation_id=answer.conversation_id,
            request_id=answer.request_id,
        )

    async def Classify(
        self, request: router_service_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> router_service_pb2.ClassifyResponse:
        user = _context(request.context)
        message_count = request.message_count if request.HasField("message_count") else None
        check_classify(request.user_id, request.message, user.display_name, user.current_streak,
                       user.local_hour, user.timezone, message_count,
                       [(t.role, t.text) for t in request.history], _ROLES)
        history = tuple(turn_from_proto(t) for t in request.history) if request.history else None
        remaining = context.time_remaining()
        decision = await self.chat.classify(
            request.user_id, request.message, user, message_count, history,
            remaining if remaining is not None else 5.0,
        )
        return router_service_pb2.ClassifyResponse(
            route=route_to_proto(decision.route),
            message_type=type_to_proto(decision.message_type),
            pattern=decision.pattern,
            model=decision.model,
            reason=decision.reason,
        )
