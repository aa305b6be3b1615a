"""Token usage of one upstream call, exactly as the upstream reported it.

One value type for the router, threads and llm services (the ledger prices it).
``input_tokens`` includes the cached ones, as OpenAI reports them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    @staticmethod
    def total(parts: Iterable[Usage]) -> Usage:
        result = Usage()
        for part in parts:
            result = result + part
        return result

    def fields(self) -> dict[str, int]:
        """Keyword arguments for the proto messages (coach.type.v1 Usage)."""
        return {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }

    @classmethod
    def of(cls, message: Any) -> Usage:
        """From any message with the four fields (coach.type.v1 Usage)."""
        return cls(message.input_tokens, message.cached_input_tokens, message.output_tokens,
                   message.reasoning_tokens)


# The purpose of the call that produced the reply; upkeep calls name theirs ("summary").
ANSWER_PURPOSE = "answer"


@dataclass(frozen=True)
class Charge:
    """Tokens of one upstream call: the answer's own ("answer") or upkeep ("summary")."""

    model: str
    usage: Usage
    purpose: str = ANSWER_PURPOSE

    def fields(self) -> dict[str, Any]:
        """Keyword arguments for the charge protos (coach.type.v1 Charge)."""
        return {"model": self.model, "purpose": self.purpose, "usage": self.usage.fields()}

    @classmethod
    def of(cls, message: Any) -> Charge:
        """From a charge proto; an empty purpose reads as "answer"."""
        return cls(message.model, Usage.of(message.usage), message.purpose or ANSWER_PURPOSE)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "purpose": self.purpose, **self.usage.fields()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Charge:
        return cls(
            model=str(raw.get("model", "")),
            purpose=str(raw.get("purpose", ANSWER_PURPOSE)),
            usage=Usage(
                input_tokens=int(raw.get("input_tokens", 0)),
                cached_input_tokens=int(raw.get("cached_input_tokens", 0)),
                output_tokens=int(raw.get("output_tokens", 0)),
                reasoning_tokens=int(raw.get("reasoning_tokens", 0)),
            ),
        )
