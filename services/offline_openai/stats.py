"""Counters the offline server keeps: API requests per endpoint (not /_control), the time it
spent handling them, and tokens."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Stats:
    requests: Counter[str] = field(default_factory=Counter)  # "POST /v1/responses" -> n
    statuses: Counter[int] = field(default_factory=Counter)
    # Seconds spent handling requests, per endpoint (from the request's arrival at the app to
    # its answer being ready): with ``requests``, the server's own share of a client's wait.
    handling_s: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    model_calls: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    faults_injected: int = 0
    cache_write_tokens: int = 0  # reported (by models that bill them)
    truncated_replies: int = 0  # cut off by max_output_tokens

    def record_model_call(self, input_tokens: int, cached_tokens: int, output_tokens: int,
                          cache_write_tokens: int = 0, truncated: bool = False) -> None:
        self.model_calls += 1
        self.input_tokens += input_tokens
        self.cached_tokens += cached_tokens
        self.output_tokens += output_tokens
        self.cache_write_tokens += cache_write_tokens
        self.truncated_replies += truncated

    def reset(self) -> None:
        self.requests.clear()
        self.statuses.clear()
        self.handling_s.clear()
        self.model_calls = self.input_tokens = self.cached_tokens = self.output_tokens = 0
        self.faults_injected = self.cache_write_tokens = self.truncated_replies = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "total_requests": sum(self.requests.values()),
            "statuses": {str(code): n for code, n in self.statuses.items()},
            "handling_ms": {endpoint: round(s * 1000, 3) for endpoint, s in self.handling_s.items()},
            "model_calls": self.model_calls,
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "faults_injected": self.faults_injected,
            "cache_write_tokens": self.cache_write_tokens,
            "truncated_replies": self.truncated_replies,
        }
