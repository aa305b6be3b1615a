"""Prompt caching simulated the way OpenAI documents it.

Only prompts of at least 1,024 tokens can be cached. A hit is the longest prefix of
the prompt, in steps of 128 tokens from 1,024 (1024, 1152, 1280, ...), that an
earlier request in the same scope already sent. The scope is the model plus the
`prompt_cache_key` when one is given (else the model alone): caches live per model.

Each boundary prefix is remembered as a digest of its tokens; the digests are computed
incrementally in one pass over the prompt (one hasher, updated chunk by chunk), and
kept in a bounded LRU.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

MIN_CACHEABLE_TOKENS = 1024
CACHE_STEP_TOKENS = 128


def cache_boundaries(prompt_len: int) -> list[int]:
    """Prefix lengths a prompt of this length can be cached at, shortest first."""
    if prompt_len < MIN_CACHEABLE_TOKENS:
        return []
    return list(range(MIN_CACHEABLE_TOKENS, prompt_len + 1, CACHE_STEP_TOKENS))


class PromptCache:
    """Remembers hashed prompt prefixes and reports how many tokens were cached."""

    def __init__(self, max_entries: int = 500_000) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._seen)

    def clear(self) -> None:
        self._seen.clear()

    @staticmethod
    def _prefix_keys(scope: str, tokens: Sequence[int]) -> list[bytes]:
        boundaries = cache_boundaries(len(tokens))
        if not boundaries:
            return []
        hasher = hashlib.blake2b(scope.encode("utf-8"), digest_size=16)
        hasher.update(b"\x00")
        keys: list[bytes] = []
        start = 0
        for end in boundaries:
            hasher.update(array("I", tokens[start:end]).tobytes())
            keys.append(hasher.digest())
            start = end
        return keys

    def lookup_and_remember(self, scope: str, tokens: Sequence[int]) -> int:
        """Cached tokens for this prompt; afterwards its prefixes count as seen."""
        keys = self._prefix_keys(scope, tokens)
        seen = self._seen
        cached = 0
        for index in range(len(keys) - 1, -1, -1):
            if keys[index] in seen:
                cached = MIN_CACHEABLE_TOKENS + CACHE_STEP_TOKENS * index
                break
        for key in keys:
            seen[key] = None
            seen.move_to_end(key)
        while len(seen) > self._max:
            seen.popitem(last=False)
        return cached
