"""Counterfactual input tokens of the baseline policy, for the savings report.

The baseline sent every message to the strong model with the whole history and every
function definition. For each answered message we estimate what that call would have
carried: the prompt prefix (persona + all tools, as the llm service reports it:
``prompt_prefix``) + every earlier message of the user + this message. Actual usage is
never estimated: it is what the upstream reported.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.common.tokens import count_tokens

__all__ = ["baseline_input_tokens", "count_tokens", "exchange_tokens"]


def exchange_tokens(user_text: str, coach_texts: Iterable[str]) -> tuple[int, int]:
    """(tokens of the user's message, tokens the exchange adds to the history)."""
    message = count_tokens(user_text)
    return message, message + sum(count_tokens(t) for t in coach_texts)


def baseline_input_tokens(prefix_tokens: int, history_tokens_before: int, message_tokens: int) -> int:
    return prefix_tokens + history_tokens_before + message_tokens
