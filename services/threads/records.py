"""What the threads service stores and hands back, in domain terms (no protobuf).

An exchange, a turn and a user's state are the suite's shared shapes
(``services.common.exchange``, ``services.common.vocabulary``); the records here are the
threads service's own. In the database and in the outbox's JSON, routes and message types
are written by their proto names (``ROUTE_PATTERN``, ``MESSAGE_TYPE_GREETING``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.common.exchange import Exchange
from services.common.vocabulary import MessageType, Role, Route, Turn


@dataclass(frozen=True)
class StoredExchange:
    exchange: Exchange
    created: bool


@dataclass(frozen=True)
class StoredMessage:
    id: int
    request_id: str
    role: Role
    text: str
    route: Route
    message_type: MessageType
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
    # Last change (a turn answered or appended in it): when its cached prefix was last used.
    updated_at: datetime | None = None

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
    role: Role
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

