"""The stateful tier: one gRPC contract, two upstream APIs.

``StatefulBackend`` is what both backends implement:
``services.llm.responses_backend`` (Responses API + Conversations API, the
default) and ``services.llm.assistants_backend`` (Assistants API v2).
``StatefulTier`` picks one per request (the request's ``api``, else
``COACH_STATEFUL_API``).

Shared rules, so both backends bill the same way:
- the instructions are the persona, byte for byte the same for every user,
  and the tool definitions (sorted, canonical JSON) come with it: a stable,
  cacheable prefix; each user's turns go under their own ``prompt_cache_key``
  (the prefix's hash and the user's), so the user's whole conversation prefix
  stays cached on one upstream cache between turns;
  a turn that carries tools also carries the persona's ``tools`` guidance
  (after the persona; turns without tools are not billed for it);
- per-user context (the context line) and crisis guidance travel with the
  turn's input, not in the instructions; the context line is sent only when it
  changed since this conversation last saw it (remembered in a bounded LRU);
- function definitions only on turns that need them (``ToolCatalog``); the
  calls the model makes are run and answered, and returned with the reply;
- usage is the sum of what the upstream reported for every model call of the
  turn.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.errors import InvalidArgument
from services.llm.caching import user_cache_key
from services.llm.persona import Persona
from services.llm.resilience import Deadline
from services.llm.tools import ToolCatalog, ToolSpec
from services.llm.turns import Audience, Generation, Reply, Turn

# Tool rounds per turn: a model that keeps calling functions is cut off here.
MAX_TOOL_ROUNDS = 3
RECAP_LABEL = "Recap of this coaching relationship before the turns below:"


class StatefulApi(enum.Enum):
    RESPONSES = "responses"
    ASSISTANTS = "assistants"


@dataclass(frozen=True)
class TurnInput:
    user_id: str
    conversation_id: str
    message: str
    audience: Audience
    generation: Generation
    all_tools: bool = False
    # Turns the conversation has not seen (the user's canned and cheap-tier exchanges since
    # its last turn), oldest first: added ahead of the message, in the same upstream call
    # where the API allows it.
    prior: tuple[Turn, ...] = ()


class StatefulBackend(Protocol):
    api: StatefulApi

    async def create_conversation(
        self, user_id: str, summary: str, seed_turns: Sequence[Turn], deadline: Deadline
    ) -> str: ...

    async def append_turns(
        self, conversation_id: str, turns: Sequence[Turn], deadline: Deadline
    ) -> int: ...

    async def stateful_turn(self, turn: TurnInput, deadline: Deadline) -> Reply: ...

    async def delete_conversation(self, conversation_id: str, deadline: Deadline) -> bool:
        """Deletes it upstream; False when it was already gone."""
        ...

    async def close(self) -> None: ...


class ContextMemo:
    """Remembers the last context line each conversation saw (bounded LRU).

    Forgetting is harmless: the line is sent again.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._seen: OrderedDict[str, str] = OrderedDict()
        self._max = max_entries

    def needs(self, conversation_id: str, line: str) -> bool:
        return self._seen.get(conversation_id) != line

    def remember(self, conversation_id: str, line: str) -> None:
        self._seen[conversation_id] = line
        self._seen.move_to_end(conversation_id)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)


@dataclass(frozen=True)
class TurnPlan:
    """What one stateful turn sends besides the conversation itself."""

    persona: str  # the shared instructions
    tools: tuple[ToolSpec, ...]
    tool_guidance: str | None  # how to use them, turns with tools only
    context_line: str | None  # None: the conversation already has it
    safety: str | None  # crisis guidance, crisis turns only
    cache_key: str
    # With a stable prefix, the names of the only tools this turn may call (the others are
    # sent but not allowed); None: every tool sent may be called.
    allowed: tuple[str, ...] | None = None

    @property
    def instructions(self) -> str:
        """The persona, then the tool guidance when the turn carries tools."""
        if self.tool_guidance:
            return f"{self.persona}\n\n{self.tool_guidance}"
        return self.persona

    @property
    def additional_instructions(self) -> str | None:
        """What a run adds to an assistant's instructions (the persona): tools, crisis."""
        extra = [text for text in (self.tool_guidance, self.safety) if text]
        return "\n\n".join(extra) if extra else None


class TurnPlanner:
    """Shared by both backends: the stable prefix and the per-turn extras."""

    def __init__(self, persona: Persona, catalog: ToolCatalog) -> None:
        self.persona = persona
        self.catalog = catalog
        self.memo = ContextMemo()

    def plan(self, turn: TurnInput, *, reply_with_calls: bool = True,
             stable_tools: bool = False) -> TurnPlan:
        """``reply_with_calls``: the API returns a reply written with a function call at once
        (Responses); False for Assistants runs, which wait for the outputs and write on.
        ``stable_tools``: send every tool and the tool guidance on every turn and allow only
        the type's tools, so that tools and instructions, which open the prompt, are the same
        bytes on every turn and the user's whole conversation stays one cached prefix (a
        turn with other tools than the last one would otherwise be read uncached)."""
        tools = self.catalog.for_turn(turn.generation.message_type, all_tools=turn.all_tools)
        allowed: tuple[str, ...] | None = None
        if stable_tools and not turn.all_tools:
            every = self.catalog.for_turn(turn.generation.message_type, all_tools=True)
            if len(tools) < len(every):
                allowed = tuple(tool.name for tool in tools)
            tools = every
        line = turn.audience.context_line()
        guidance = self.persona.tools if reply_with_calls else self.persona.tools_assistants
        return TurnPlan(
            persona=self.persona.coach,
            tools=tools,
            allowed=allowed,
            tool_guidance=guidance if tools else None,
            context_line=line if self.memo.needs(turn.conversation_id, line) else None,
            safety=self.persona.safety if turn.generation.is_crisis else None,
            # One key for the tier's instructions, whatever tools a turn carries: turns
            # with and without tools then route to the same cache (never per user).
            cache_key=user_cache_key("stateful", self.persona.coach, turn.user_id),
        )

    def sent(self, turn: TurnInput) -> None:
        self.memo.remember(turn.conversation_id, turn.audience.context_line())


class StatefulTier:
    def __init__(self, backends: dict[StatefulApi, StatefulBackend], default: StatefulApi) -> None:
        self.backends = backends
        self.default = default

    def backend(self, api: StatefulApi | None) -> StatefulBackend:
        chosen = api or self.default
        found = self.backends.get(chosen)
        if found is None:
            raise InvalidArgument(f"stateful API {chosen.value} is not configured",
                                  reason="STATEFUL_API_UNAVAILABLE")
        return found

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.close()
