"""Token usage of one upstream call, exactly as the upstream reported it.

One value type for the router, threads and llm services (the ledger prices it).
``input_tokens`` includes the cached ones and the ones written to the cache, as
OpenAI reports them; ``service_tier`` is the tier the upstream reported (it sets
the price), and ``truncated`` says the reply was cut off by max_output_tokens.
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
    cache_write_tokens: int = 0
    service_tier: str = ""
    truncated: bool = False

    def __add__(self, other: Usage) -> Usage:
        """The calls of one turn (tool rounds): one model, so one tier; the last one's wins."""
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            other.service_tier or self.service_tier,
            self.truncated or other.truncated,
        )

    @staticmethod
    def total(parts: Iterable[Usage]) -> Usage:
        result = Usage()
        for part in parts:
            result = result + part
        return result

    def fields(self) -> dict[str, Any]:
        """Keyword arguments for the proto messages (coach.type.v1 Usage)."""
        return {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "service_tier": self.service_tier,
            "truncated": self.truncated,
        }

    @classmethod
    def of(cls, message: Any) -> Usage:
        """From a coach.type.v1 Usage (fields added later read as their zero value)."""
        return cls(message.input_tokens, message.cached_input_tokens, message.output_tokens,
                   message.reasoning_tokens, message.cache_write_tokens, message.service_tier,
                   message.truncated)


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
        """The journal / outbox form; fields added later appear only when set, so a line
        reads the same in a process that predates them."""
        fields = self.usage.fields()
        for later in ("cache_write_tokens", "service_tier", "truncated"):
            if not fields[later]:
                del fields[later]
        return {"model": self.model, "purpose": self.purpose, **fields}

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
                cache_write_tokens=int(raw.get("cache_write_tokens", 0)),
                service_tier=str(raw.get("service_tier", "")),
                truncated=bool(raw.get("truncated", False)),
            ),
        )
