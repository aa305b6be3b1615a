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
        """Keyword arguments for the proto messages (types_pb2.Usage, llm TokenUsage)."""
        return {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }

    @classmethod
    def of(cls, message: Any) -> Usage:
        """From any message with the four fields (types_pb2.Usage, llm TokenUsage)."""
        return cls(message.input_tokens, message.cached_input_tokens, message.output_tokens,
                   message.reasoning_tokens)
