"""One model call: count the prompt, look up the prompt cache, decide and size the reply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .caching import PromptCache
from .replies import GoalCall, Reply, ReplyRequest, TextReply, decide_reply

# Models that bill prompt-cache writes (1.25x input from the gpt-5.6 family on) and so
# report them as cache_write_tokens; earlier models write to the cache for free.
CACHE_WRITE_BILLING_PREFIXES = ("gpt-5.6", "gpt-6", "gpt-7")
# What a response reports for a requested service_tier ("auto" runs on default).
REPORTED_TIERS = {"auto": "default", "default": "default", "flex": "flex",
                  "priority": "priority", "scale": "scale", "batch": "batch"}


def bills_cache_writes(model: str) -> bool:
    return model.startswith(CACHE_WRITE_BILLING_PREFIXES)


def reported_tier(requested: str | None) -> str:
    return REPORTED_TIERS.get(requested or "auto", "default")
from .stats import Stats
from .tokens import Segment, TokenCounter, tools_text


@dataclass(frozen=True, slots=True)
class ModelCall:
    model: str
    context: Sequence[Segment]  # history plus new input, oldest first
    instructions: str = ""
    tools: Sequence[Any] = ()  # tool definitions exactly as sent
    tool_names: frozenset[str] = frozenset()
    cache_key: str | None = None
    max_output_tokens: int | None = None
    saved_goal: str = ""  # the goal of the function call being answered, if any
    extra_instructions: Sequence[str] = field(default_factory=tuple)
    preamble_allowed: bool = True  # False for Assistants runs (see ReplyRequest)
    cache_retention: str | None = None  # "in_memory" (default) or "24h"
    verbosity: str | None = None  # low / medium / high; None: medium


@dataclass(frozen=True, slots=True)
class ModelResult:
    reply: Reply
    truncated: bool
    input_tokens: int  # includes cached_tokens
    cached_tokens: int
    output_tokens: int
    cache_write_tokens: int = 0  # reported only by models that bill cache writes

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class OfflineModel:
    """Deterministic stand-in for an OpenAI model, with honest usage numbers."""

    def __init__(self, counter: TokenCounter, cache: PromptCache, stats: Stats) -> None:
        self.counter = counter
        self.cache = cache
        self.stats = stats

    def prompt_segments(self, call: ModelCall) -> list[Segment]:
        segments: list[Segment] = []
        if call.tools:
            segments.append(Segment("tools", tools_text(call.tools)))
        if call.instructions:
            segments.append(Segment("system", call.instructions))
        segments.extend(Segment("system", text) for text in call.extra_instructions if text)
        segments.extend(call.context)
        return segments

    def generate(self, call: ModelCall) -> ModelResult:
        prompt = self.counter.prompt_tokens(self.prompt_segments(call))
        scope = f"{call.model}\x1f{call.cache_key or ''}"
        outcome = self.cache.read_and_write(scope, prompt, call.cache_retention)
        cached = outcome.cached_tokens
        written = outcome.written_tokens if bills_cache_writes(call.model) else 0

        user_texts = [s.text for s in call.context if s.role == "user"]
        last = call.context[-1] if call.context else None
        instructions = "\n".join([call.instructions, *call.extra_instructions])
        reply = decide_reply(
            ReplyRequest(
                latest_user_text=user_texts[-1] if user_texts else "",
                user_texts=user_texts,
                instructions=instructions,
                tool_names=call.tool_names,
                answering_tool_output=last is not None and last.role == "tool",
                saved_goal=call.saved_goal,
                context_size=len(call.context),
                preamble_allowed=call.preamble_allowed,
                verbosity=call.verbosity,
            )
        )
        truncated = False
        if isinstance(reply, GoalCall):
            output_tokens = (self.counter.count(reply.preamble) + self.counter.count(reply.name)
                             + self.counter.count(reply.arguments))
        else:
            limit = call.max_output_tokens
            text = reply.text
            if limit is not None:
                text, output_tokens, truncated = self.counter.truncate(text, limit)
                reply = TextReply(text)
            else:
                output_tokens = self.counter.count(text)
        self.stats.record_model_call(len(prompt), cached, output_tokens, written, truncated)
        return ModelResult(reply, truncated, len(prompt), cached, output_tokens, written)
