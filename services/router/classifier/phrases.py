"""Data-file phrases compiled to regexes over normalized tokens, matched on word boundaries."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from services.router.classifier.datafile import DataFile
from services.router.classifier.memo import WordMemo
from services.router.classifier.normalize import APOSTROPHES, WORD_RE, NormalizedText

_PHRASE_WORD = re.compile(r"^[a-z0-9*]+$")
REMEMBERED_WORDS = 50_000  # per-word memos are then forgotten all at once (a cheap refill)


def _split_phrase(phrase: str) -> list[str]:
    """Split on spaces, keeping parenthesised groups (and a trailing ``?``) whole.

    A group ends its part: ``(good )?(morning|evening)`` is two parts.
    """
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in phrase:
        if depth == 0 and current.endswith(")") and ch != "?" or (
            depth == 0 and current.endswith(")?")
        ):
            parts.append(current)
            current = ""
        if ch == "(":
            if depth == 0 and current:
                parts.append(current)
                current = ""
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ')'")
        if ch.isspace() and depth == 0:
            if current:
                parts.append(current)
            current = ""
        else:
            current += ch
    if depth != 0:
        raise ValueError("unbalanced '('")
    if current:
        parts.append(current)
    return parts


def _split_alternatives(body: str) -> list[str]:
    alts: list[str] = []
    depth = 0
    current = ""
    for ch in body:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "|" and depth == 0:
            alts.append(current)
            current = ""
        else:
            current += ch
    alts.append(current)
    return alts


# Normalizes a literal from a data file into message tokens (``Normalizer.literal``).
WordMapper = Callable[[str], tuple[str, ...]]


def compile_phrase(phrase: str, word: WordMapper) -> str:
    """Compile one data-file phrase to a regex body over normalized text.

    ``word`` normalizes a literal exactly as message words are normalized (so
    ``don't``, ``dont`` and ``u`` in a data file mean what they mean in a
    message). ``(a|b)?`` makes a group optional. Raises ValueError with a
    readable problem.
    """
    parts = _split_phrase(phrase.strip().lower())
    if not parts:
        raise ValueError("empty phrase")
    pieces: list[tuple[str, str]] = []  # (kind, regex): kind in word/opt/gap/^/$
    for i, part in enumerate(parts):
        if part in ("^", "$"):
            if (part == "^" and i != 0) or (part == "$" and i != len(parts) - 1):
                raise ValueError(f"{part!r} must come {'first' if part == '^' else 'last'}")
            pieces.append((part, part))
            continue
        if part == "...":
            if i == 0 or i == len(parts) - 1 or parts[i + 1] == "$":
                raise ValueError("'...' must sit between two words")
            pieces.append(("gap", ""))
            continue
        optional = part.startswith("(") and part.endswith(")?")
        if optional:
            part = part[:-1]
        if part.startswith("(") and part.endswith(")"):
            alts = [a.strip() for a in _split_alternatives(part[1:-1])]
            if any(not a for a in alts):
                raise ValueError(f"empty alternative in {part!r}")
            body = "(?:" + "|".join(compile_phrase(a, word) for a in alts) + ")"
        elif optional:
            raise ValueError(f"only a (group)? can be optional: {part!r}")
        elif "|" in part:
            body = "(?:" + "|".join(compile_phrase(a, word) for a in part.split("|")) + ")"
        elif part == "_":
            body = r"\S+"
        elif part == "#":
            body = r"\d\S*"
        elif "*" in part:
            lit = part.translate(APOSTROPHES)
            if lit == "*" or not _PHRASE_WORD.match(lit):
                raise ValueError(f"bad wildcard word {part!r}")
            body = r"\S*".join(re.escape(p) for p in lit.split("*"))
        else:
            words = word(part)
            if not words:
                raise ValueError(f"{part!r} has no word in it")
            body = " ".join(re.escape(w) for w in words)
        pieces.append(("opt" if optional else "word", body))
    if all(kind != "word" for kind, _ in pieces):
        raise ValueError("needs at least one required word")
    # Words are separated by one space; a gap swallows 0-4 whole words.
    regex = ""
    need_space = False
    for kind, body in pieces:
        if kind in ("^", "$"):
            regex += body
        elif kind == "gap":
            regex += r"(?: \S+){0,4}"
        elif kind == "opt":
            regex += f"(?: {body})?" if need_space else f"(?:{body} )?"
        else:
            regex += (" " if need_space else "") + body
            need_space = True
    return regex


def phrase_words(phrases: Iterable[str]) -> set[str]:
    """Literal words used in phrases (for the normalizer's vocabulary)."""
    words: set[str] = set()
    for phrase in phrases:
        for chunk in re.split(r"[\s()|?]+", phrase.lower()):
            if "*" in chunk:  # a wildcard word is no literal
                continue
            # words as a message's are cut (any script: "спасибо" was left out when only
            # a-z counted, and no message in Cyrillic could pass a set's vocabulary check)
            for tok in WORD_RE.findall(chunk):
                tok = tok.translate(APOSTROPHES)
                if tok and tok[0].isalnum():
                    words.add(tok)
    return words


def expand_head(phrase: str) -> list[tuple[str, str]]:
    """Split a phrase into variants by its first word, for indexing.

    Returns ``(key, variant)`` pairs; ``key`` is ``"w:<word>"`` for a literal
    first word, ``"p:<abc>"`` for a wildcard word with a literal prefix of at
    least three letters (indexed by those three), or ``""`` when the variant can
    start with any word. ``(a|b) x`` becomes ``a x`` and ``b x``; ``(a)? x``
    becomes ``a x`` and ``x``.
    """
    parts = _split_phrase(phrase.strip().lower())
    anchor = ""
    if parts and parts[0] == "^":
        anchor, parts = "^ ", parts[1:]
    if not parts:
        return [("", phrase)]
    head, tail = parts[0], parts[1:]
    rest = " ".join(tail)
    alts: list[str] | None = None
    optional = head.endswith(")?") and head.startswith("(")
    if optional:
        alts = _split_alternatives(head[1:-2])
    elif head.startswith("(") and head.endswith(")"):
        alts = _split_alternatives(head[1:-1])
    elif "|" in head:
        alts = head.split("|")
    if alts is not None:
        out: list[tuple[str, str]] = []
        for alt in alts:
            out.extend(expand_head(f"{anchor}{alt.strip()} {rest}".strip()))
        if optional:
            if not tail or tail[0] in ("...", "$"):
                return [("", phrase)]
            out.extend(expand_head(f"{anchor}{rest}"))
        return out
    if head in ("_", "#", "...", "$"):
        return [("", phrase)]
    if "*" in head:
        prefix = head.split("*", 1)[0].translate(APOSTROPHES)
        if len(prefix) >= 3 and prefix.isalnum():
            return [(f"p:{prefix[:3]}", phrase)]
        return [("", phrase)]
    return [(f"w:{head}", phrase)]


@dataclass(frozen=True)
class PhraseSet:
    """A list of phrases, matched on token boundaries.

    For speed, phrases are indexed by the words they can start with: a message
    only tries the phrases whose first word it contains. Phrases that may start
    with any word (wildcards, ``_``, raw regexes) share one regex search.
    """

    by_first: Mapping[str, tuple[re.Pattern[str], ...]]
    by_prefix: Mapping[str, tuple[re.Pattern[str], ...]]
    rest: re.Pattern[str] | None
    # Each word's candidates (by word, then by prefix), remembered: messages repeat their
    # words, so a word costs one lookup instead of two and a slice.
    _by_word: WordMemo[tuple[re.Pattern[str], ...]] = field(
        default_factory=lambda: WordMemo(REMEMBERED_WORDS), init=False, repr=False,
        compare=False)

    @classmethod
    def build(cls, phrases: Sequence[str], regexes: Sequence[str], word: WordMapper,
              data: DataFile, where: str) -> PhraseSet:
        by_first: dict[str, list[re.Pattern[str]]] = {}
        by_prefix: dict[str, list[re.Pattern[str]]] = {}
        rest: list[str] = []
        for i, phrase in enumerate(phrases):
            try:
                compile_phrase(phrase, word)  # validates the phrase as written
                for key, variant in expand_head(phrase):
                    body = compile_phrase(variant, word)
                    if not key:
                        rest.append(body)
                        continue
                    anchored = re.compile(f"(?:{body})" + r"(?!\S)")
                    if key.startswith("p:"):
                        by_prefix.setdefault(key[2:], []).append(anchored)
                        continue
                    for first in word(key[2:])[:1]:
                        by_first.setdefault(first, []).append(anchored)
            except ValueError as exc:
                raise data.error(f"{where}[{i}]", f"phrase {phrase!r}: {exc}") from None
        for i, rx in enumerate(regexes):
            try:
                re.compile(rx)
            except re.error as exc:
                raise data.error(f"{where}.regex[{i}]", f"bad regex {rx!r}: {exc}") from None
            rest.append(rx)
        return cls(
            by_first={k: tuple(v) for k, v in by_first.items()},
            by_prefix={k: tuple(v) for k, v in by_prefix.items()},
            rest=re.compile(r"(?<!\S)(?:" + "|".join(rest) + r")(?!\S)") if rest else None,
        )

    def search(self, text: str) -> str | None:
        """The first matching phrase's text in a normalized message, or None."""
        remembered = self._by_word
        pos = 0
        for token in text.split(" "):
            candidates = remembered.get(token)
            if candidates is None:
                candidates = self._candidates(token)
            for rx in candidates:
                m = rx.match(text, pos)
                if m is not None:
                    return m.group(0)
            pos += len(token) + 1
        return self.search_rest(text)

    def _candidates(self, token: str) -> tuple[re.Pattern[str], ...]:
        return self._by_word.remember(
            token, self.by_first.get(token, ()) + self.by_prefix.get(token[:3], ()))

    def search_rest(self, text: str) -> str | None:
        """The phrases that may start with any word (one regex), anywhere in the message."""
        if self.rest is not None:
            m = self.rest.search(text)
            if m is not None:
                return m.group(0)
        return None


@dataclass(frozen=True)
class WholeMessageMatcher:
    """True when a message is *only* triggers plus allowed words, with ≥1 trigger.

    E.g. with triggers ``hey``, ``good morning`` and allowed ``coach``, ``there``:
    "hey there" and "good morning coach" match; "hey can u help me plan" does not.
    """

    whole: re.Pattern[str]
    trigger: re.Pattern[str]
    max_words: int
    vocabulary: frozenset[str] | None  # every word the phrases can use (None: wildcards)

    @classmethod
    def build(cls, triggers: Sequence[str], allowed: Sequence[str], max_words: int,
              word: WordMapper, data: DataFile, where: str) -> WholeMessageMatcher:
        def bodies(items: Sequence[str], key: str) -> list[str]:
            out: list[str] = []
            for i, phrase in enumerate(items):
                try:
                    body = compile_phrase(phrase, word)
                except ValueError as exc:
                    raise data.error(f"{where}.{key}[{i}]", f"phrase {phrase!r}: {exc}") from None
                if "^" in phrase.split() or "$" in phrase.split() or "..." in phrase:
                    raise data.error(f"{where}.{key}[{i}]",
                                     f"phrase {phrase!r}: '^', '$' and '...' are not allowed here")
                out.append(body)
            return out

        trig = bodies(triggers, "triggers")
        allow = bodies(allowed, "allowed")
        vocabulary: frozenset[str] | None = None
        if not any("*" in p or "_" in p.split() or "#" in p for p in [*triggers, *allowed]):
            vocabulary = frozenset(
                token for w in phrase_words([*triggers, *allowed]) for token in word(w))
        alt = "(?:" + "|".join(sorted(trig + allow, key=len, reverse=True)) + ")"
        return cls(
            whole=re.compile(f"^{alt}(?: {alt})*$"),
            trigger=re.compile(r"(?<!\S)(?:" + "|".join(trig) + r")(?!\S)"),
            max_words=max_words,
            vocabulary=vocabulary,
        )

    def matches(self, norm: NormalizedText) -> bool:
        if not norm.tokens or len(norm.tokens) > self.max_words:
            return False
        if self.vocabulary is not None and not self.vocabulary.issuperset(norm.tokens):
            return False
        return bool(self.whole.match(norm.text)) and bool(self.trigger.search(norm.text))

