"""The words the router's decisions are made of: the suite's message types and turns
(``services.common.vocabulary``, one type per concept for every service), and the classifier's
own groupings of them."""

from __future__ import annotations

import zlib

from services.common.vocabulary import MessageType, Turn

__all__ = ["COMPLEX_TYPES", "MessageType", "PriorTurn", "stable_index"]

# An earlier turn of the conversation, oldest first in a history tuple: the shared Turn.
PriorTurn = Turn


def stable_index(seed: str, size: int) -> int:
    """A deterministic pseudo-random index in ``range(size)`` (same seed, same index)."""
    return zlib.crc32(seed.encode("utf-8")) % size


# Types a thread continuation keeps if the reply itself is already one of them.
COMPLEX_TYPES = frozenset({
    MessageType.ACCOUNTABILITY, MessageType.GOAL_SETTING, MessageType.PATTERN_ANALYSIS,
    MessageType.DEEP_COACHING, MessageType.STRUGGLING, MessageType.CRISIS,
})
