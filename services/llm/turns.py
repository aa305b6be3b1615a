"""What the llm service talks about: turns, audiences, generation settings, usage."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from services.common.usage import Usage

CRISIS = "MESSAGE_TYPE_CRISIS"


class Role(enum.Enum):
    USER = "user"
    COACH = "assistant"  # the OpenAI role name of the coach's messages


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str


@dataclass(frozen=True)
class Audience:
    """Who the coach is talking to; travels as a context line, never in the instructions."""

    display_name: str = ""
    current_streak: int = 0

    def context_line(self) -> str:
        """``Context: name Sam; current streak 5 days.`` (empty when nothing is known)."""
        parts = []
        if self.display_name:
            parts.append(f"name {self.display_name}")
        parts.append(f"current streak {self.current_streak} day{'s' if self.current_streak != 1 else ''}")
        return "Context: " + "; ".join(parts) + "."


@dataclass(frozen=True)
class Generation:
    """What the router chose for this message: model, output bound, temperature, type."""

    model: str
    max_output_tokens: int
    temperature: float = 0.0
    message_type: str = ""

    @property
    def is_crisis(self) -> bool:
        return self.message_type == CRISIS

    @property
    def sends_temperature(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class ToolCallRecord:
    """A function the model called, and what we answered."""

    name: str
    arguments_json: str
    output_json: str


@dataclass(frozen=True)
class Reply:
    """One answer of either tier."""

    texts: tuple[str, ...]
    model: str
    usage: Usage
    tool_calls: tuple[ToolCallRecord, ...] = ()
    response_id: str = ""

    @property
    def text(self) -> str:
        return "\n\n".join(t for t in self.texts if t)
