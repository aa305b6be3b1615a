"""Prompt caching simulated the way OpenAI documents it.

Only prompts of at least 1,024 tokens can be cached. A hit is the longest prefix of
the prompt, in steps of 128 tokens from 1,024 (1024, 1152, 1280, ...), that an
earlier request in the same scope already sent. The scope is the model plus the
`prompt_cache_key` when one is given (else the model alone): caches live per model.

A cached prefix expires after ``ttl_seconds`` of inactivity (OpenAI: 5-10 minutes with
the default in-memory retention), or after 24 hours when the request asked for
``prompt_cache_retention: "24h"``; every request that sends a prefix, hit or not,
refreshes it (with that request's retention). The tokens a request adds to the cache
(its longest cacheable prefix beyond what was already cached) are its cache writes,
which the models that bill them report as ``cache_write_tokens``. Time is read from a `SimClock` (real, or simulated by a benchmark); when
the clock switches between real and simulated time the cache starts empty.

Each boundary prefix is remembered as a digest of its tokens; the digests are computed
incrementally in one pass over the prompt (one hasher, updated chunk by chunk), and
kept in a bounded LRU ordered by last use (so expired entries are dropped from its front).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from .clock import SimClock

MIN_CACHEABLE_TOKENS = 1024
CACHE_STEP_TOKENS = 128
DEFAULT_TTL_SECONDS = 600.0
RETENTION_IN_MEMORY = "in_memory"
RETENTION_24H = "24h"
RETENTIONS = (RETENTION_IN_MEMORY, RETENTION_24H)
EXTENDED_TTL_SECONDS = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class CacheOutcome:
    cached_tokens: int  # the prefix read from the cache
    written_tokens: int  # the tokens this request added to the cache


def cache_boundaries(prompt_len: int) -> list[int]:
    """Prefix lengths a prompt of this length can be cached at, shortest first."""
    if prompt_len < MIN_CACHEABLE_TOKENS:
        return []
    return list(range(MIN_CACHEABLE_TOKENS, prompt_len + 1, CACHE_STEP_TOKENS))


class PromptCache:
    """Remembers hashed prompt prefixes and reports how many tokens were cached.

    ``ttl_seconds`` of 0 means cached prefixes never expire.
    """

    def __init__(self, max_entries: int = 500_000, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 clock: SimClock | None = None, enabled: bool = True) -> None:
        if ttl_seconds < 0:
            raise ValueError(f"ttl_seconds must be >= 0, got {ttl_seconds}")
        # digest -> (last used, seconds of inactivity it survives; 0 = forever)
        self._seen: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self._max = max_entries
        self.enabled = enabled  # False: nothing is ever cached (nor written)
        self.ttl_seconds = float(ttl_seconds)
        self.clock = clock if clock is not None else SimClock()
        self._base = self.clock.base

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

    def _expire(self, now: float) -> None:
        """Drop entries idle for longer than the TTL (the LRU front is the least recently used)."""
        if self._base != self.clock.base:  # real <-> simulated: old stamps mean nothing now
            self._seen.clear()
            self._base = self.clock.base
            return
        seen = self._seen
        while seen:  # the front is the least recently used; a longer-lived one stops the sweep
            key, (last_used, ttl) = next(iter(seen.items()))
            if not ttl or last_used + ttl >= now:
                break
            del seen[key]

    def ttl_for(self, retention: str | None) -> float:
        """Seconds of inactivity a prefix survives under a request's retention."""
        if retention == RETENTION_24H:
            return EXTENDED_TTL_SECONDS if self.ttl_seconds else 0.0
        return self.ttl_seconds

    def lookup_and_remember(self, scope: str, tokens: Sequence[int]) -> int:
        """Cached tokens for this prompt; afterwards its prefixes count as seen (now)."""
        return self.read_and_write(scope, tokens).cached_tokens

    def read_and_write(
        self, scope: str, tokens: Sequence[int], retention: str | None = None
    ) -> CacheOutcome:
        """What this prompt read from the cache and wrote to it; its prefixes are then
        remembered as used now, under the request's retention."""
        if not self.enabled:
            return CacheOutcome(0, 0)
        keys = self._prefix_keys(scope, tokens)
        now = self.clock.now()
        self._expire(now)
        if not keys:
            return CacheOutcome(0, 0)
        seen = self._seen
        cached = 0
        for index in range(len(keys) - 1, -1, -1):
            entry = seen.get(keys[index])
            # The front sweep misses entries stamped later than now (simulated time set back).
            if entry is not None and (not entry[1] or entry[0] + entry[1] >= now):
                cached = MIN_CACHEABLE_TOKENS + CACHE_STEP_TOKENS * index
                break
        ttl = self.ttl_for(retention)
        for key in keys:
            seen[key] = (now, ttl)
            seen.move_to_end(key)
        while len(seen) > self._max:
            seen.popitem(last=False)
        longest = MIN_CACHEABLE_TOKENS + CACHE_STEP_TOKENS * (len(keys) - 1)
        return CacheOutcome(cached, longest - cached)
