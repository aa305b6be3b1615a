"""What the threads service needs from its peers, as domain-level interfaces.

``llm_client.LlmClient`` and ``ledger_client.LedgerClient`` implement these over
gRPC; a failed call raises a ``CoachError`` carrying the peer's status code and
reason, so a caller sees exactly what the llm service said.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.exchange import AnswerRecord
from services.common.usage import Usage
from services.common.vocabulary import MessageType, Turn
from services.threads.records import ToolCall


@dataclass(frozen=True)
class TurnSettings:
    """Generation settings and audience of one stateful turn."""

    model: str
    max_output_tokens: int
    temperature: float
    message_type: MessageType
    display_name: str
    current_streak: int
    all_tools: bool


@dataclass(frozen=True)
class TurnReply:
    texts: tuple[str, ...]
    model: str
    usage: Usage
    tool_calls: tuple[ToolCall, ...]
    response_id: str


@dataclass(frozen=True)
class SummaryReply:
    summary: str
    model: str
    usage: Usage


class ConversationProvider(Protocol):
    """The llm service's stateful tier and its cheap summarizer."""

    async def create_conversation(
        self, *, request_id: str, user_id: str, api: str, summary: str, seed_turns: Sequence[Turn]
    ) -> str: ...

    async def append_turns(
        self, *, request_id: str, conversation_id: str, api: str, turns: Sequence[Turn]
    ) -> int: ...

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
    ) -> TurnReply: ...

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
        """``background``: nobody waits on it (a fold after the reply): the llm may send it
        at a cheaper, slower service tier."""
        ...

    async def delete_conversation(self, *, conversation_id: str, api: str) -> bool:
        """Deletes it upstream; False when it was already gone."""
        ...


class AnswerLedger(Protocol):
    """The ledger's batch intake; idempotent on each record's request_id."""

    async def record_answers(self, records: Sequence[AnswerRecord]) -> None: ...
