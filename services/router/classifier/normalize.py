"""Raw text to normalized tokens (the classifier module docstring, step 1)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.router.classifier.memo import WordMemo

APOSTROPHES = str.maketrans({"’": "", "‘": "", "'": "", "`": ""})
EMOJI_MODIFIERS = frozenset({"\ufe0f", "\ufe0e", "\u200d", "\u20e3"}) | frozenset(
    chr(c) for c in range(0x1F3FB, 0x1F400)
)


# Where Unicode has combining marks: from U+0300 to the end of the first two planes, and the
# variation selectors supplement. Scanning only there keeps start-up from walking all 1.1
# million code points (0.13 s); a test holds these to a full scan.
MARK_PLANES = ((0x300, 0x20000), (0xE0100, 0xE01F0))


def _mark_ranges() -> str:
    """A regex class body of every combining mark (Unicode categories Mn, Mc, Me) but the
    emoji modifiers. Hindi, Bengali, Tamil and Thai write vowels as marks, and Arabic its
    short vowels: without them inside a word, "शुक्रिया" (thanks) fell apart into single
    letters and placeholders, and no phrase in those scripts could ever match."""
    marks = [c for first, end in MARK_PLANES for c in range(first, end)
             if unicodedata.category(chr(c)) in ("Mn", "Mc", "Me")
             and chr(c) not in EMOJI_MODIFIERS]
    ranges: list[tuple[int, int]] = []
    for c in marks:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "")
                   for a, b in ranges)


# A word: letters or digits, the marks that belong to them, inner apostrophes; or one symbol.
_LETTER = rf"(?:[^\W_][{_mark_ranges()}]*)"
WORD_RE = re.compile(rf"{_LETTER}+(?:['’‘]{_LETTER}+)*|[^\w\s]")
# Runs of a repeated *letter* are squeezed ("sooo" -> "soo", "so"); digits are not: "1000
# pushups" and "day 111" are numbers, not elongated words.
_RUN3 = re.compile(r"([^\W\d_])\1{2,}")
_RUN2 = re.compile(r"([^\W\d_])\1+")
_TOKEN_CACHE_LIMIT = 50_000


@dataclass(frozen=True)
class NormalizedText:
    """A message as the rules see it: ``text`` is ``tokens`` joined by single spaces."""

    tokens: tuple[str, ...]
    text: str
    question: bool


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


class Normalizer:
    """Turns raw text into :class:`NormalizedText`; see the module docstring, step 1."""

    def __init__(
        self,
        *,
        spelling: Mapping[str, str],
        emoji: Mapping[str, str],
        typo_tolerant: Iterable[str],
        vocabulary: Iterable[str],
    ) -> None:
        self._spelling = {k: tuple(v.split()) for k, v in spelling.items()}
        self._emoji = dict(emoji)
        self._vocab = frozenset(vocabulary) | frozenset(
            w for v in self._spelling.values() for w in v
        )
        # One-slip typo index: every deletion variant of every tolerant word.
        self._typo_exact: dict[str, str] = {}
        self._typo_deletions: dict[str, str] = {}
        for word in typo_tolerant:
            self._typo_exact[word] = word
            for d in _deletions(word):
                self._typo_deletions.setdefault(d, word)
        self._cache: WordMemo[tuple[str, ...]] = WordMemo(_TOKEN_CACHE_LIMIT)

    def _piece(self, piece: str) -> tuple[str, ...]:
        """The tokens of one piece of a lower-cased message (a word or a symbol other than
        "?"), remembered: messages repeat their words, so most pieces are a lookup."""
        if piece[0].isalnum():
            result = self._word_uncached(_fold_accents(piece).translate(APOSTROPHES))
        elif piece in EMOJI_MODIFIERS or piece.isascii() \
                or unicodedata.category(piece).startswith("P"):
            result = ()
        else:
            result = (self._emoji.get(piece, "emoji"),)
        return self._cache.remember(piece, result)

    def _word_uncached(self, raw: str) -> tuple[str, ...]:
        candidates = [raw]
        squeezed2 = _RUN3.sub(r"\1\1", raw)
        if squeezed2 != raw:
            candidates.append(squeezed2)
        squeezed1 = _RUN2.sub(r"\1", raw)
        if squeezed1 not in candidates:
            candidates.append(squeezed1)
        for cand in candidates:
            if cand in self._spelling:
                return self._spelling[cand]
            if cand in self._vocab:
                return (cand,)
        if len(raw) >= 5 and not raw.isdigit():
            fixed = self._typo(squeezed2)
            if fixed is not None:
                return (fixed,)
        return (squeezed2,)

    def _typo(self, word: str) -> str | None:
        # Symmetric deletions: edit distance 1, counting a swap of neighbours as one.
        if word in self._typo_deletions:  # the input lacks a letter: "finshed"
            return self._typo_deletions[word]
        for d in _deletions(word):
            if d in self._typo_exact:  # the input has an extra letter: "finisshed"
                return self._typo_exact[d]
            if d in self._typo_deletions:  # a wrong or swapped letter: "finsihed"
                return self._typo_deletions[d]
        return None

    def literal(self, text: str) -> tuple[str, ...]:
        """Tokens of a data-file literal, normalized exactly like a message."""
        return self.normalize(text).tokens

    def normalize(self, text: str) -> NormalizedText:
        text = unicodedata.normalize("NFKC", text).lower()
        tokens: list[str] = []
        question = False
        remembered = self._cache
        for piece in WORD_RE.findall(text):
            if piece == "?":
                question = True
                continue
            found = remembered.get(piece)
            tokens += found if found is not None else self._piece(piece)
        return NormalizedText(tuple(tokens), " ".join(tokens), question)


def _fold_accents(word: str) -> str:
    """"días" -> "dias", "schön" -> "schon": Latin letters lose their accents (people type
    them either way); a word in another script is kept as it is."""
    if word.isascii():
        return word
    folded = "".join(ch for ch in unicodedata.normalize("NFKD", word)
                     if not unicodedata.combining(ch))
    return folded if folded.isascii() else word
