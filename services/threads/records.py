"""What the threads service stores and hands back, in domain terms (no protobuf).

Routes and message types travel as their enum names (``ROUTE_PATTERN``,
``MESSAGE_TYPE_GREETING``), exactly as the contract spells them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.common.usage import Charge

ROUTE_ASSISTANT = "ROUTE_ASSISTANT"
ROUTE_PATTERN = "ROUTE_PATTERN"

USER = "user"
COACH = "coach"


@dataclass(frozen=True)
class Turn:
    """One message of a conversation: ``role`` is "user" or "coach"."""

    role: str
    text: str


@dataclass(frozen=True)
class Exchange:
    """One user message and the coach's answer to it."""

    request_id: str
    user_id: str
    user_text: str
    coach_texts: tuple[str, ...]
    route: str
    message_type: str
    pattern: str = ""
    model: str = ""
    charges: tuple[Charge, ...] = ()
    conversation_id: str = ""
    latency_ms: int = 0
    created_at: datetime | None = None


@dataclass(frozen=True)
class StoredExchange:
    exchange: Exchange
    created: bool


@dataclass(frozen=True)
class UserState:
    message_count: int
    recent_turns: tuple[Turn, ...]
    existing: Exchange | None
    messages_today: int
    last_canned_reply: str


@dataclass(frozen=True)
class StoredMessage:
    id: int
    request_id: str
    role: str
    text: str
    route: str
    message_type: str
    model: str
    created_at: datetime


@dataclass(frozen=True)
class MessagePage:
    messages: tuple[StoredMessage, ...]
    next_page_token: str


@dataclass(frozen=True)
class Conversation:
    """A user's mapping to one provider conversation."""

    id: int
    user_id: str
    provider_conversation_id: str
    api: str
    status: str
    summary: str
    summarized_through: int
    seen_through: int
    seed_turns: int
    turns_in_window: int
    generation: int

    @property
    def held_messages(self) -> int:
        """Messages the provider conversation holds (seed included; the summary aside)."""
        return self.seed_turns + self.turns_in_window


@dataclass(frozen=True)
class ConversationView:
    """What GetConversation shows: the active mapping and how many the user has had."""

    conversation: Conversation | None
    generation: int


@dataclass(frozen=True)
class HistoryMessage:
    """A stored message as the pruning and continuity code sees it."""

    id: int
    role: str
    text: str

    def turn(self) -> Turn:
        return Turn(self.role, self.text)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments_json: str
    output_json: str = ""


@dataclass(frozen=True)
class GoalSaved:
    goal: str
    deadline: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AnswerRecord:
    """What the ledger records for one answered message (travels through the outbox)."""

    request_id: str
    user_id: str
    route: str
    message_type: str
    model: str
    charges: tuple[Charge, ...]
    latency_ms: int
    answer_time: datetime
    baseline_input_tokens: int

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "route": self.route,
            "message_type": self.message_type,
            "model": self.model,
            "charges": [c.to_json() for c in self.charges],
            "latency_ms": self.latency_ms,
            "answer_time": self.answer_time.isoformat(),
            "baseline_input_tokens": self.baseline_input_tokens,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AnswerRecord:
        return cls(
            request_id=str(raw["request_id"]),
            user_id=str(raw["user_id"]),
            route=str(raw["route"]),
            message_type=str(raw["message_type"]),
            model=str(raw.get("model", "")),
            charges=tuple(Charge.from_json(c) for c in raw.get("charges", [])),
            latency_ms=int(raw.get("latency_ms", 0)),
            answer_time=datetime.fromisoformat(str(raw["answer_time"])),
            baseline_input_tokens=int(raw.get("baseline_input_tokens", 0)),
        )
