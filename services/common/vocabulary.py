"""The suite's shared vocabulary in domain terms: how a message was answered, what kind of
message it was, one turn of a conversation.

The proto package coach.type.v1 is the same vocabulary on the wire. Each enum's member names
are the proto value names without their prefix (``Route.PATTERN`` is ``ROUTE_PATTERN``) and
its values the proto numbers, so every service maps them the same way, once, at its
boundary (``proto_name``, ``from_proto_name``, ``int(route.value)``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal


class Route(enum.Enum):
    """How a message is answered; names mirror proto ``ROUTE_<name>``.

    The router's decision is PATTERN, COMPLETIONS or ASSISTANT; FALLBACK is set by the
    answering code when the upstream fails.
    """

    PATTERN = 1
    COMPLETIONS = 2
    ASSISTANT = 3
    FALLBACK = 4

    @property
    def proto_name(self) -> str:
        return f"ROUTE_{self.name}"

    @classmethod
    def from_proto_name(cls, name: str) -> Route:
        """``"ROUTE_PATTERN"`` -> ``Route.PATTERN``; KeyError for anything else."""
        return cls[name.removeprefix("ROUTE_")]


class MessageType(enum.Enum):
    """What kind of message the user sent; names mirror proto ``MESSAGE_TYPE_<name>``."""

    GREETING = 1
    ACKNOWLEDGEMENT = 2
    CHECK_IN = 3
    CELEBRATION = 4
    STRUGGLING = 5
    QUESTION = 6
    ACCOUNTABILITY = 7
    GOAL_SETTING = 8
    PATTERN_ANALYSIS = 9
    DEEP_COACHING = 10
    CRISIS = 11

    @property
    def proto_name(self) -> str:
        return f"MESSAGE_TYPE_{self.name}"

    @classmethod
    def from_proto_name(cls, name: str) -> MessageType:
        """``"MESSAGE_TYPE_GREETING"`` -> ``MessageType.GREETING``; KeyError otherwise."""
        return cls[name.removeprefix("MESSAGE_TYPE_")]


Role = Literal["user", "coach"]
USER: Role = "user"
COACH: Role = "coach"


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, oldest first in a history tuple."""

    role: Role
    text: str
