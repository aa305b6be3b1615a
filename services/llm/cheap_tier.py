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
from collections.abc import Sequence
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from services.common.usage import Usage
from services.llm.persona import Persona
from services.llm.resilience import Deadline, Upstream
from services.llm.turns import Audience, Generation, Reply, Turn
from services.llm.upstream import create_chat_completion

log = logging.getLogger(__name__)


def prompt_cache_key(tier: str, prefix: str) -> str:
    """A key shared by every call with the same stable prefix (never per user)."""
    return f"coach-{tier}-{hashlib.sha256(prefix.encode('utf-8')).hexdigest()[:16]}"


def chat_usage(completion: ChatCompletion) -> Usage:
    """Chat Completions usage: prompt_tokens already include the cached ones."""
    usage = completion.usage
    if usage is None:
        return Usage()
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None
    reasoning = (
        usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else None
    )
    return Usage(
        input_tokens=usage.prompt_tokens,
        cached_input_tokens=cached or 0,
        output_tokens=usage.completion_tokens,
        reasoning_tokens=reasoning or 0,
    )


SUMMARY_REQUEST = (
    "Update the summary so far with the new turns above. Reply with the updated summary only."
)


class CheapTier:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        upstream: Upstream,
        persona: Persona,
        *,
        history_turns: int,
        summary_max_tokens: int,
        default_model: str,
    ) -> None:
        self.client = client
        self.upstream = upstream
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

    async def _create(
        self, api: str, deadline: Deadline, **params: Any
    ) -> ChatCompletion:
        async def attempt(timeout: float) -> ChatCompletion:
            return await create_chat_completion(self.client, params, timeout)

        return await self.upstream.call(api, attempt, deadline)

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
        completion = await self._create("chat.completions", deadline, **params)
        text = (completion.choices[0].message.content or "").strip() if completion.choices else ""
        return Reply(texts=(text,), model=completion.model or model, usage=chat_usage(completion))

    async def summarize(
        self, previous_summary: str, turns: Sequence[Turn], model: str, deadline: Deadline
    ) -> Reply:
        """Instructions (stable prefix), the summary so far, the new turns, the request."""
        model = model or self.default_model
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.persona.summary}]
        recap = previous_summary.strip() or "(empty: this is the start of the conversation)"
        messages.append({"role": "system", "content": f"Summary so far:\n{recap}"})
        messages.extend({"role": turn.role.value, "content": turn.text} for turn in turns)
        messages.append({"role": "user", "content": SUMMARY_REQUEST})
        completion = await self._create(
            "chat.completions",
            deadline,
            model=model,
            messages=messages,
            max_completion_tokens=self.summary_max_tokens,
            prompt_cache_key=prompt_cache_key("summary", self.persona.summary),
        )
        text = (completion.choices[0].message.content or "").strip() if completion.choices else ""
        return Reply(texts=(text or previous_summary,), model=completion.model or model,
                     usage=chat_usage(completion))
