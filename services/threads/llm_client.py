"""``ConversationProvider`` over gRPC to coach.llm.v1.LlmService."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from coach.llm.v1 import llm_service_pb2 as llm_pb
from coach.llm.v1 import llm_service_pb2_grpc
from coach.type.v1 import types_pb2

from services.common.deadlines import time_left
from services.common.rich_status import error_from_rpc
from services.common.usage import Usage
from services.common.vocabulary import COACH, Turn
from services.threads.peer_errors import PeerCallFailed
from services.threads.ports import SummaryReply, TurnReply, TurnSettings
from services.threads.records import ToolCall

_API = {"responses": llm_pb.STATEFUL_API_RESPONSES, "assistants": llm_pb.STATEFUL_API_ASSISTANTS}
_ROLE = {COACH: llm_pb.TURN_ROLE_COACH}


def _turns(turns: Sequence[Turn]) -> list[llm_pb.ChatTurn]:
    return [llm_pb.ChatTurn(role=_ROLE.get(t.role, llm_pb.TURN_ROLE_USER), text=t.text) for t in turns]


def _usage(usage: types_pb2.Usage) -> Usage:
    return Usage.of(usage)


def _failed(exc: grpc.aio.AioRpcError) -> PeerCallFailed:
    code, reason, violations = error_from_rpc(exc)
    return PeerCallFailed("llm", code, exc.details() or "", reason, violations)


class LlmClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float) -> None:
        self._stub = llm_service_pb2_grpc.LlmServiceStub(channel)
        self._timeout = timeout_s

    async def create_conversation(
        self, *, request_id: str, user_id: str, api: str, summary: str, seed_turns: Sequence[Turn]
    ) -> str:
        request = llm_pb.CreateConversationRequest(
            request_id=request_id, user_id=user_id, api=_API[api], summary=summary,
            seed_turns=_turns(seed_turns),
        )
        try:
            reply = await self._stub.CreateConversation(request, timeout=time_left(self._timeout))
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from exc
        return reply.conversation_id

    async def append_turns(
        self, *, request_id: str, conversation_id: str, api: str, turns: Sequence[Turn]
    ) -> int:
        request = llm_pb.AppendTurnsRequest(
            request_id=request_id, conversation_id=conversation_id, api=_API[api], turns=_turns(turns)
        )
        try:
            reply = await self._stub.AppendTurns(request, timeout=time_left(self._timeout))
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from exc
        return reply.appended

    async def stateful_turn(
        self,
        *,
        request_id: str,
        user_id: str,
        conversation_id: str,
        api: str,
        message: str,
        settings: TurnSettings,
        prior_turns: Sequence[Turn] = (),
    ) -> TurnReply:
        request = llm_pb.StatefulTurnRequest(
            request_id=request_id,
            user_id=user_id,
            conversation_id=conversation_id,
            api=_API[api],
            message=message,
            audience=llm_pb.Audience(
                display_name=settings.display_name, current_streak=settings.current_streak
            ),
            generation=llm_pb.Generation(
                model=settings.model,
                max_output_tokens=settings.max_output_tokens,
                temperature=settings.temperature,
                message_type=settings.message_type.proto_name,
            ),
            all_tools=settings.all_tools,
            prior_turns=_turns(prior_turns),
        )
        try:
            reply = await self._stub.StatefulTurn(request, timeout=time_left(self._timeout))
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from exc
        return TurnReply(
            texts=tuple(reply.texts),
            model=reply.model,
            usage=_usage(reply.usage),
            tool_calls=tuple(
                ToolCall(c.name, c.arguments_json, c.output_json) for c in reply.tool_calls
            ),
            response_id=reply.response_id,
        )

    async def summarize(
        self,
        *,
        request_id: str,
        user_id: str,
        previous_summary: str,
        turns: Sequence[Turn],
        model: str,
        background: bool = False,
    ) -> SummaryReply:
        request = llm_pb.SummarizeRequest(
            request_id=request_id, user_id=user_id, previous_summary=previous_summary,
            turns=_turns(turns), model=model, background=background,
        )
        try:
            reply = await self._stub.Summarize(request, timeout=time_left(self._timeout))
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from exc
        return SummaryReply(summary=reply.summary, model=reply.model, usage=_usage(reply.usage))

    async def delete_conversation(self, *, conversation_id: str, api: str) -> bool:
        request = llm_pb.DeleteConversationRequest(conversation_id=conversation_id, api=_API[api])
        try:
            reply = await self._stub.DeleteConversation(request, timeout=time_left(self._timeout))
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from exc
        return reply.existed

    async def baseline_prefix_tokens(self, timeout_s: float) -> int:
        """The size of the baseline policy's prompt prefix (GetPromptPrefix). Waits for the
        llm service to be reachable, up to ``timeout_s``."""
        try:
            reply = await self._stub.GetPromptPrefix(
                llm_pb.GetPromptPrefixRequest(), timeout=timeout_s, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from exc
        return int(reply.baseline_tokens)
