"""The prompt prefix of the baseline policy: what every one of its calls carries first.

The baseline policy (every message on the stateful tier, every function definition on
every call) sends the coach persona with its tool guidance and all the tools' definitions
before the conversation. Its size is the fixed part of each message's baseline estimate,
which the threads service asks for once (``LlmService.GetPromptPrefix``): the llm service
is the one that knows what it sends.
"""

from __future__ import annotations

import json

from services.common.tokens import ENCODING, count_tokens
from services.llm.persona import Persona
from services.llm.tools import ToolCatalog

__all__ = ["ENCODING", "baseline_prefix_tokens"]


def baseline_prefix_tokens(persona: Persona, catalog: ToolCatalog) -> int:
    """Tokens of the persona with its tool guidance plus every function definition."""
    instructions = f"{persona.coach}\n\n{persona.tools}"
    definitions = ToolCatalog.chat_format(tuple(catalog.tools.values()))
    return count_tokens(instructions) + count_tokens(json.dumps(definitions, sort_keys=True))
