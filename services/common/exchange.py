"""One answered message, as every service that handles it sees it.

The router answers and journals it, threads stores it (and hands it back to a retry), and
both read a user's state from the same shape. What the ledger records of it is an
``AnswerRecord``: threads writes one to its outbox with every stored exchange, the ledger
prices it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.usage import ANSWER_PURPOSE, Charge, Usage
from services.common.vocabulary import MessageType, Route, Turn


@dataclass(frozen=True)
class Exchange:
    """One user message and the coach's answer to it."""

    request_id: str
    user_id: str
    user_text: str
    coach_texts: tuple[str, ...]
    route: Route
    message_type: MessageType
    # The canned set, when route is PATTERN.
    pattern: str = ""
    # Model of the answer; empty for canned and fallback replies.
    model: str = ""
    # The answer's own call ("answer") and any upkeep calls it carries (a summary).
    charges: tuple[Charge, ...] = ()
    conversation_id: str = ""
    latency_ms: int = 0
    # When it was stored (threads sets it).
    created_at: datetime | None = None

    @property
    def coach_turn(self) -> str:
        """The coach's side of the exchange as one turn of the history."""
        return "\n\n".join(self.coach_texts)

    @property
    def answer_usage(self) -> Usage:
        """Usage of the answer's own call: exactly what the upstream reported."""
        total = Usage()
        for charge in self.charges:
            if charge.purpose == ANSWER_PURPOSE:
                total = total + charge.usage
        return total

    def to_json(self) -> dict[str, Any]:
        """One line of the router's journal (routes and types by member name)."""
        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "user_text": self.user_text,
            "coach_texts": list(self.coach_texts),
            "route": self.route.name,
            "message_type": self.message_type.name,
            "pattern": self.pattern,
            "model": self.model,
            "charges": [c.to_json() for c in self.charges],
            "conversation_id": self.conversation_id,
            "latency_ms": self.latency_ms,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Exchange:
        return cls(
            request_id=str(raw["request_id"]),
            user_id=str(raw["user_id"]),
            user_text=str(raw["user_text"]),
            coach_texts=tuple(str(t) for t in raw["coach_texts"]),
            route=Route[raw["route"]],
            message_type=MessageType[raw["message_type"]],
            pattern=str(raw.get("pattern", "")),
            model=str(raw.get("model", "")),
            charges=tuple(Charge.from_json(c) for c in raw.get("charges", ())),
            conversation_id=str(raw.get("conversation_id", "")),
            latency_ms=int(raw.get("latency_ms", 0)),
        )


@dataclass(frozen=True)
class AnswerRecord:
    """What the ledger records for one answered message (through threads' outbox)."""

    request_id: str
    user_id: str
    route: Route
    message_type: MessageType | None  # None: the sender did not say
    model: str  # "" for canned and fallback answers
    charges: tuple[Charge, ...]
    latency_ms: int
    answer_time: datetime  # timezone-aware
    # Input tokens the baseline policy would have sent for this message (history included).
    baseline_input_tokens: int

    def to_json(self) -> dict[str, Any]:
        """The outbox row's JSON (routes and types by proto name)."""
        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "route": self.route.proto_name,
            "message_type": (self.message_type.proto_name if self.message_type is not None
                             else UNSPECIFIED_MESSAGE_TYPE),
            "model": self.model,
            "charges": [c.to_json() for c in self.charges],
            "latency_ms": self.latency_ms,
            "answer_time": self.answer_time.isoformat(),
            "baseline_input_tokens": self.baseline_input_tokens,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AnswerRecord:
        message_type = str(raw["message_type"])
        return cls(
            request_id=str(raw["request_id"]),
            user_id=str(raw["user_id"]),
            route=Route.from_proto_name(str(raw["route"])),
            message_type=(MessageType.from_proto_name(message_type)
                          if message_type != UNSPECIFIED_MESSAGE_TYPE else None),
            model=str(raw.get("model", "")),
            charges=tuple(Charge.from_json(c) for c in raw.get("charges", [])),
            latency_ms=int(raw.get("latency_ms", 0)),
            answer_time=datetime.fromisoformat(str(raw["answer_time"])),
            baseline_input_tokens=int(raw.get("baseline_input_tokens", 0)),
        )


UNSPECIFIED_MESSAGE_TYPE = "MESSAGE_TYPE_UNSPECIFIED"


@dataclass(frozen=True)
class UserState:
    """What deciding a user's next message needs: threads stores it, the router caches it."""

    message_count: int
    recent_turns: tuple[Turn, ...]
    # The stored exchange, when the request id asked about was already answered.
    existing: Exchange | None
    messages_today: int
    last_canned_reply: str
