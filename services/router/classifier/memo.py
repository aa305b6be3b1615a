"""A per-word memo: messages repeat their words, so what a decision works out for a word is
kept and looked up next time (a plain ``dict.get`` on the hot path)."""

from __future__ import annotations

from typing import TypeVar

V = TypeVar("V")

__all__ = ["WordMemo"]


class WordMemo(dict[str, V]):
    """A dict of what was worked out per word, bounded: when ``limit`` words are kept it is
    forgotten all at once, a rare and cheap refill (no per-lookup bookkeeping, as an LRU
    would need). Read it with ``get``; add with :meth:`remember`."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, word: str, value: V) -> V:
        if len(self) >= self.limit:
            self.clear()
        self[word] = value
        return value
