"""The cheap tier: one Chat Completions call per answer, and the running summary.

``complete``: the persona as the system prompt (byte-stable, shared by every
user), a context line (name, streak), the last few turns, crisis guidance on
crisis turns, then the message. Never any function definitions.

``summarize``: summary instructions, then the previous summary, only the new
turns (as the messages they were) and a closing request; the model returns the
new summary (bounded by ``COACH_SUMMARY_MAX_TOKENS``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from services.common.usage import Usage
from services.llm.caching import CachePolicy
from services.llm.persona import Persona
from services.llm.resilience import Deadline, Upstream
from services.llm.turns import Audience, Generation, Reply, Turn
from services.llm.upstream import ChatCompletions
from services.llm.verbosity import VerbosityPolicy

log = logging.getLogger(__name__)


def prompt_cache_key(tier: str, prefix: str) -> str:
    """A key shared by every call with the same stable prefix (never per user)."""
    return f"coach-{tier}-{hashlib.sha256(prefix.encode('utf-8')).hexdigest()[:16]}"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def chat_usage(completion: Mapping[str, Any]) -> Usage:
    """Chat Completions usage (the answer's JSON): prompt_tokens already include the cached ones
    and the ones written to the cache; the tier is the one the answer reports; a first choice
    that ended on ``finish_reason: "length"`` was cut off by max_completion_tokens."""
    tier = completion.get("service_tier")
    truncated = chat_finish_reason(completion) == "length"
    usage = completion.get("usage")
    if not isinstance(usage, dict):
        return Usage(service_tier=tier if isinstance(tier, str) else "", truncated=truncated)
    prompt_details = usage.get("prompt_tokens_details")
    if not isinstance(prompt_details, dict):
        prompt_details = {}
    completion_details = usage.get("completion_tokens_details")
    return Usage(
        input_tokens=_count(usage.get("prompt_tokens")),
        cached_input_tokens=_count(prompt_details.get("cached_tokens")),
        output_tokens=_count(usage.get("completion_tokens")),
        reasoning_tokens=(
            _count(completion_details.get("reasoning_tokens"))
            if isinstance(completion_details, dict) else 0
        ),
        cache_write_tokens=_count(prompt_details.get("cache_write_tokens")),
        service_tier=tier if isinstance(tier, str) else "",
        truncated=truncated,
    )


def chat_finish_reason(completion: Mapping[str, Any]) -> str:
    """The first choice's finish_reason ('' when there is none)."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    reason = choices[0].get("finish_reason")
    return reason if isinstance(reason, str) else ""


def chat_text(completion: Mapping[str, Any]) -> str:
    """The first choice's text ('' when there is none)."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content.strip() if isinstance(content, str) else ""


def chat_model(completion: Mapping[str, Any], requested: str) -> str:
    model = completion.get("model")
    return model if isinstance(model, str) and model else requested


SUMMARY_REQUEST = (
    "Update the summary so far with the new turns above. Reply with the updated summary only."
)


class CheapTier:
    def __init__(
        self,
        chat: ChatCompletions,
        upstream: Upstream,
        persona: Persona,
        *,
        history_turns: int,
        summary_max_tokens: int,
        default_model: str,
        verbosity: VerbosityPolicy | None = None,
        caching: CachePolicy | None = None,
        background: Upstream | None = None,
    ) -> None:
        self.chat = chat
        self.verbosity = verbosity or VerbosityPolicy()
        self.caching = caching or CachePolicy()
        self.upstream = upstream
        # Calls nobody waits on go through an upstream of their own: a flex tier out of
        # capacity (429) must never open the breaker that guards the cheap tier's replies.
        self.background = background or upstream
        self.persona = persona
        self.history_turns = history_turns
        self.summary_max_tokens = summary_max_tokens
        self.default_model = default_model
        # Cheap-tier prompts differ only after the persona, so all share one key.
        self.cache_key = prompt_cache_key("cheap", persona.coach)

    def messages(
        self, message: str, history: Sequence[Turn], audience: Audience, generation: Generation
    ) -> list[dict[str, Any]]:
        """System persona, context line, bounded history, crisis guidance, the message."""
        window = list(history)[-self.history_turns:] if self.history_turns else []
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self.persona.coach},
            {"role": "system", "content": audience.context_line()},
        ]
        messages.extend({"role": turn.role.value, "content": turn.text} for turn in window)
        if generation.is_crisis:
            messages.append({"role": "system", "content": self.persona.safety})
        messages.append({"role": "user", "content": message})
        return messages

    async def _create(self, api: str, deadline: Deadline, *, upstream: Upstream | None = None,
                      **params: Any) -> dict[str, Any]:
        async def attempt(timeout: float) -> dict[str, Any]:
            return await self.chat.create(params, timeout)

        return await (upstream or self.upstream).call(api, attempt, deadline)

    async def complete(
        self,
        message: str,
        history: Sequence[Turn],
        audience: Audience,
        generation: Generation,
        deadline: Deadline,
    ) -> Reply:
        model = generation.model or self.default_model
        params: dict[str, Any] = {
            "model": model,
            "messages": self.messages(message, history, audience, generation),
            "max_completion_tokens": generation.max_output_tokens,
            "prompt_cache_key": self.cache_key,
        }
        if generation.sends_temperature:
            params["temperature"] = generation.temperature
        verbosity = self.verbosity.for_turn(model, generation.message_type)
        if verbosity:
            params["verbosity"] = verbosity
        retention = self.caching.retention_for("cheap", model)
        if retention:
            params["prompt_cache_retention"] = retention
        completion = await self._create("chat.completions", deadline, **params)
        return Reply(texts=(chat_text(completion),), model=chat_model(completion, model),
                     usage=chat_usage(completion))

    async def summarize(
        self, previous_summary: str, turns: Sequence[Turn], model: str, deadline: Deadline,
        *, background: bool = False,
    ) -> Reply:
        """Instructions (stable prefix), the summary so far, the new turns, the request.

        ``background``: nobody waits on it, so it goes at the data's background service tier
        (flex: half price, may be refused for capacity and is then retried like any 429)."""
        model = model or self.default_model
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.persona.summary}]
        recap = previous_summary.strip() or "(empty: this is the start of the conversation)"
        messages.append({"role": "system", "content": f"Summary so far:\n{recap}"})
        messages.extend({"role": turn.role.value, "content": turn.text} for turn in turns)
        messages.append({"role": "user", "content": SUMMARY_REQUEST})
        extra: dict[str, Any] = {}
        retention = self.caching.retention_for("summary", model)
        if retention:
            extra["prompt_cache_retention"] = retention
        service_tier = self.caching.service_tier_for("background", model) if background else None
        if service_tier:
            extra["service_tier"] = service_tier
        completion = await self._create(
            "chat.completions",
            deadline,
            upstream=self.background if background else None,
            model=model,
            messages=messages,
            max_completion_tokens=self.summary_max_tokens,
            prompt_cache_key=prompt_cache_key("summary", self.persona.summary),
            **extra,
        )
        return Reply(texts=(chat_text(completion) or previous_summary,),
                     model=chat_model(completion, model), usage=chat_usage(completion))
