"""The words the router's decisions are made of: message types, prior turns."""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass
from typing import Literal


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


@dataclass(frozen=True)
class PriorTurn:
    """One earlier turn of the conversation, oldest first in a history tuple."""

    role: Literal["user", "coach"]
    text: str


def stable_index(seed: str, size: int) -> int:
    """A deterministic pseudo-random index in ``range(size)`` (same seed, same index)."""
    return zlib.crc32(seed.encode("utf-8")) % size


# Types a thread continuation keeps if the reply itself is already one of them.
COMPLEX_TYPES = frozenset({
    MessageType.ACCOUNTABILITY, MessageType.GOAL_SETTING, MessageType.PATTERN_ANALYSIS,
    MessageType.DEEP_COACHING, MessageType.STRUGGLING, MessageType.CRISIS,
})

