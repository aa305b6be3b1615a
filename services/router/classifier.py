"""What kind of message is this? The router's one text-understanding component.

Everything here is deterministic rules over *normalized tokens*; the word lists
live in ``data/classifier.yaml`` (rules, crisis language, coach-question rules)
and ``data/patterns.yaml`` (what a whole canned-eligible message may contain).

How a message is read, step by step (a newcomer's tour):

1. **Normalize** (:class:`Normalizer`). Lower-case, NFKC, curly quotes made
   straight, then split into word tokens; apostrophes are dropped inside words
   (``don't`` → ``dont``, ``I'm`` → ``im``). Punctuation is dropped but ``?``
   is remembered. Emoji become words from the ``emoji`` table (👍 →
   ``thumbsup``; unknown emoji → ``emoji``). Each word then goes through, in
   order: the ``spelling`` table (``u`` → ``you``, ``thx`` → ``thanks``, ``gm`` →
   ``good morning``); if it is still not a word the data files know, stretched
   letters are squeezed (``heyyy`` → ``hey``, ``soooo`` → ``so``); then, for
   the few words listed in ``typo_tolerant``, one slip is forgiven (a missing,
   extra, wrong or swapped letter: ``finsihed`` → ``finished``).
2. **Match phrases on token boundaries, never substrings.** Every phrase in the
   data files is compiled to a regex over the space-joined tokens with
   ``(?<!\\S)`` / ``(?!\\S)`` guards, so ``hi`` never matches ``this`` and
   ``done`` is only ever the word *done*. Phrase syntax (see :func:`compile_phrase`):
   ``word``, ``pre*`` / ``*ing`` (wildcard inside a word), ``(a|b c)``
   (alternatives, each itself a phrase), ``_`` (any one word), ``...`` (up to
   four words), ``#`` (a number such as ``3``, ``8k``, ``140kg``), ``^`` / ``$``
   (start / end of message).
3. **Classify** (:meth:`Classifier.classify`), first answer wins:

   a. *Crisis* language anywhere → ``CRISIS`` (deliberately generous, negation
      is ignored: "I'm not suicidal lol" still counts).
   b. The coach's last turn opened a coaching thread (a reflective or plan
      question, per ``coach_turns.open_threads``) → the reply continues that
      thread, typed after it, unless the reply is itself complex or a bare
      greeting. A yes/no answer to a "did u do it?" check-in becomes a
      completion (yes) or an accountability message (no).
   c. The *whole* message is a canned-eligible greeting, acknowledgement,
      completion or brief struggle (``patterns.yaml``) → that type, and the
      router may answer from the canned set.
   d. The ordered ``rules`` of ``classifier.yaml``: the first rule whose
      phrases occur (and whose ``unless`` phrases do not) gives the type.
   e. Fallbacks: ``?`` → ``QUESTION``; a short message with a greeting in it →
      ``GREETING``; a very long message → ``DEEP_COACHING``; else ``CHECK_IN``.

Nothing here decides *how* to answer; that is :mod:`services.router.decision`.
"""

from __future__ import annotations

import enum
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from services.common.errors import ConfigError as _BaseConfigError

__all__ = [
    "Classification",
    "Classifier",
    "ConfigError",
    "DataFile",
    "MessageType",
    "NormalizedText",
    "Normalizer",
    "PhraseSet",
    "PriorTurn",
    "WholeMessageMatcher",
    "compile_phrase",
    "stable_index",
]


class ConfigError(_BaseConfigError):
    """A router data file is invalid. The message names the file, the key and the problem."""

    def __init__(self, file: str | Path, key: str, problem: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        super().__init__(f"{self.file}: {key}: {problem}")


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


# --------------------------------------------------------------------------- data files


class DataFile:
    """A parsed YAML data file with typed accessors that fail with a clear ConfigError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(path, "(file)", "file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(path, "(file)", f"not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(path, "(top level)", "must be a mapping of keys")
        self.root: dict[str, Any] = raw

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    def get(self, node: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> Any:
        if key not in node:
            if required:
                raise self.error(f"{where}.{key}".lstrip("."), "missing")
            return None
        return node[key]

    def mapping(self, node: Mapping[str, Any], key: str, where: str = "",
                *, required: bool = True) -> dict[str, Any]:
        value = self.get(node, key, where, required=required)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.error(f"{where}.{key}".lstrip("."), "must be a mapping")
        return value

    def str_list(self, node: Mapping[str, Any], key: str, where: str = "",
                 *, required: bool = True, non_empty: bool = True) -> list[str]:
        path = f"{where}.{key}".lstrip(".")
        value = self.get(node, key, where, required=required)
        if value is None and not required:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.error(path, "must be a list of non-empty strings")
        if non_empty and not value:
            raise self.error(path, "must not be empty")
        return [str(v) for v in value]


# --------------------------------------------------------------------------- normalization

_WORD_RE = re.compile(r"[^\W_]+(?:['’‘][^\W_]+)*|[^\w\s]")
_APOSTROPHES = str.maketrans({"’": "", "‘": "", "'": "", "`": ""})
_EMOJI_MODIFIERS = frozenset({"\ufe0f", "\ufe0e", "\u200d", "\u20e3"}) | frozenset(
    chr(c) for c in range(0x1F3FB, 0x1F400)
)
_RUN3 = re.compile(r"(.)\1{2,}")
_RUN2 = re.compile(r"(.)\1+")
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
        self._cache: dict[str, tuple[str, ...]] = {}

    def word(self, raw: str) -> tuple[str, ...]:
        """Normalize one word token (already lower-case, apostrophes removed)."""
        hit = self._cache.get(raw)
        if hit is not None:
            return hit
        result = self._word_uncached(raw)
        if len(self._cache) >= _TOKEN_CACHE_LIMIT:
            self._cache.clear()
        self._cache[raw] = result
        return result

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
        for piece in _WORD_RE.findall(text):
            if piece[0].isalnum():
                tokens.extend(self.word(piece.translate(_APOSTROPHES)))
                continue
            if piece == "?":
                question = True
            elif piece in _EMOJI_MODIFIERS or piece.isascii() or unicodedata.category(piece).startswith("P"):
                continue
            else:
                tokens.append(self._emoji.get(piece, "emoji"))
        return NormalizedText(tuple(tokens), " ".join(tokens), question)


# --------------------------------------------------------------------------- phrases

_PHRASE_WORD = re.compile(r"^[a-z0-9*]+$")


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
_WordMapper = Callable[[str], tuple[str, ...]]


def compile_phrase(phrase: str, word: _WordMapper) -> str:
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
            lit = part.translate(_APOSTROPHES)
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
        for tok in re.findall(r"[a-z0-9'’]+", phrase.lower()):
            tok = tok.translate(_APOSTROPHES)
            if tok and "*" not in tok:
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
        prefix = head.split("*", 1)[0].translate(_APOSTROPHES)
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

    @classmethod
    def build(cls, phrases: Sequence[str], regexes: Sequence[str], word: _WordMapper,
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
        by_first, by_prefix = self.by_first, self.by_prefix
        pos = 0
        for token in text.split(" "):
            candidates = by_first.get(token)
            if candidates is not None:
                for rx in candidates:
                    m = rx.match(text, pos)
                    if m is not None:
                        return m.group(0)
            if by_prefix:
                candidates = by_prefix.get(token[:3])
                if candidates is not None:
                    for rx in candidates:
                        m = rx.match(text, pos)
                        if m is not None:
                            return m.group(0)
            pos += len(token) + 1
        return self.search_rest(text)

    def search_rest(self, text: str) -> str | None:
        """The phrases that may start with any word (one regex), anywhere in the message."""
        if self.rest is not None:
            m = self.rest.search(text)
            if m is not None:
                return m.group(0)
        return None


@dataclass(frozen=True)
class RuleIndex:
    """The indexed phrases of the classifier's ordered rules in one table, so that a message
    is scanned once for all of them instead of once per rule (``first_rule``)."""

    rules: tuple[_Rule, ...]
    by_first: Mapping[str, tuple[tuple[int, re.Pattern[str]], ...]]
    by_prefix: Mapping[str, tuple[tuple[int, re.Pattern[str]], ...]]

    @classmethod
    def of(cls, rules: Sequence[_Rule]) -> RuleIndex:
        by_first: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
        by_prefix: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
        for i, rule in enumerate(rules):  # rule by rule, in order: each keeps its phrase order
            for key, patterns in rule.phrases.by_first.items():
                by_first.setdefault(key, []).extend((i, rx) for rx in patterns)
            for key, patterns in rule.phrases.by_prefix.items():
                by_prefix.setdefault(key, []).extend((i, rx) for rx in patterns)
        return cls(tuple(rules), {k: tuple(v) for k, v in by_first.items()},
                   {k: tuple(v) for k, v in by_prefix.items()})

    def first_rule(self, text: str) -> tuple[_Rule, str] | None:
        """The first rule whose phrases occur in ``text`` and whose ``unless`` phrases do
        not, with the phrase that matched: what taking the rules in order with
        ``PhraseSet.search`` gives, in one scan of the message that stops trying a rule once
        an earlier one is known to apply."""
        rules = self.rules
        best, best_hit = len(rules), ""
        judged: set[int] = set()  # rules whose first indexed match was found (kept or vetoed)
        pos = 0
        for token in text.split(" "):
            # As in PhraseSet.search: at each word a rule's by-word phrases, then its
            # by-prefix ones; the candidates are in rule order.
            for table, key in ((self.by_first, token), (self.by_prefix, token[:3])):
                for i, rx in table.get(key, ()):
                    if i >= best:
                        break
                    if i in judged:
                        continue
                    m = rx.match(text, pos)
                    if m is not None:
                        judged.add(i)
                        if rules[i].unless.search(text) is None:
                            best, best_hit = i, m.group(0)
                            break
            pos += len(token) + 1
        # An earlier rule with no indexed match may still match by its any-word phrases.
        for i in range(best):
            if i not in judged:
                hit = rules[i].phrases.search_rest(text)
                if hit is not None and rules[i].unless.search(text) is None:
                    return rules[i], hit
        return (rules[best], best_hit) if best < len(rules) else None


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
              word: _WordMapper, data: DataFile, where: str) -> WholeMessageMatcher:
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


class CannedMatcher(Protocol):
    """What the classifier needs from the canned sets (implemented in ``patterns.py``)."""

    def whole_message_type(self, norm: NormalizedText) -> MessageType | None:
        """The type of canned set the whole message fits, if any."""
        ...


# --------------------------------------------------------------------------- classifier


@dataclass(frozen=True)
class Classification:
    """The classifier's verdict.

    ``canned_eligible`` means the whole message is of a canned kind (the router
    still applies onboarding, streak and hour rules). ``continues_thread`` means
    the message answers the coach's open coaching question and belongs on the
    stateful tier. ``did_you_answer`` is "yes" / "no" for a reply to a "did u do
    it?" check-in, else "". ``generic`` means no rule recognized anything in the
    message (the "everyday update" default): on its own it says little.
    """

    message_type: MessageType
    reason: str
    canned_eligible: bool = False
    continues_thread: bool = False
    did_you_answer: str = ""
    generic: bool = False


@dataclass(frozen=True)
class _Rule:
    message_type: MessageType
    why: str
    phrases: PhraseSet
    unless: PhraseSet


@dataclass(frozen=True)
class _ThreadRule:
    message_type: MessageType
    proposal: bool
    phrases: PhraseSet


# Types a thread continuation keeps if the reply itself is already one of them.
COMPLEX_TYPES = frozenset({
    MessageType.ACCOUNTABILITY, MessageType.GOAL_SETTING, MessageType.PATTERN_ANALYSIS,
    MessageType.DEEP_COACHING, MessageType.STRUGGLING, MessageType.CRISIS,
})


def _message_type(data: DataFile, value: Any, where: str) -> MessageType:
    name = str(value).removeprefix("MESSAGE_TYPE_")
    try:
        return MessageType[name]
    except KeyError:
        known = ", ".join(t.name for t in MessageType)
        raise data.error(where, f"unknown message type {value!r} (known: {known})") from None


@dataclass(frozen=True)
class CoachTurn:
    """What a coach's turn asks of the reply that follows it (a function of its text alone)."""

    did_you_question: bool = False  # "did u do it?": a yes is a completion, a no a miss
    simple_question: bool = False  # the reply is read on its own
    open_thread: MessageType | None = None  # the coaching question the reply answers


# Coach turns read and kept (oldest dropped first): a user's next message reads the coach's
# last turn again, and the router reads each of its answers right after replying.
COACH_TURNS_KEPT = 8192


@dataclass(frozen=True)
class Classifier:
    """Rule-based message classifier; build with :meth:`from_data`, then :meth:`classify`."""

    normalizer: Normalizer
    canned: CannedMatcher
    crisis: PhraseSet
    rules: tuple[_Rule, ...]
    greeting_words: PhraseSet
    did_you_questions: PhraseSet
    simple_questions: PhraseSet
    threads: tuple[_ThreadRule, ...]
    affirmative: WholeMessageMatcher
    negative: WholeMessageMatcher
    long_message_words: int
    short_greeting_words: int
    # A reply this short to a coach's open question is read as an answer to it.
    short_reply_words: int = 5
    _coach_turns: dict[str, CoachTurn] = field(default_factory=dict, init=False, repr=False,
                                               compare=False)
    _rule_index: RuleIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rule_index", RuleIndex.of(self.rules))

    # -- loading --------------------------------------------------------------------

    @staticmethod
    def vocabulary(data: DataFile) -> set[str]:
        """All literal words in classifier.yaml (the normalizer must not 'fix' them)."""
        words: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, str):
                words.update(phrase_words([node]))
            elif isinstance(node, list):
                for item in node:
                    walk(item)
            elif isinstance(node, dict):
                for key, item in node.items():
                    if key not in ("spelling", "emoji", "regex", "why", "type", "not_typos"):
                        walk(item)

        walk(data.root)
        words.update(phrase_words(str(v) for v in data.mapping(data.root, "spelling").values()))
        words.update(str(v) for v in data.mapping(data.root, "emoji").values())
        words.update(w.lower() for w in data.str_list(data.root, "not_typos"))
        return words

    @staticmethod
    def normalizer_tables(data: DataFile) -> tuple[dict[str, str], dict[str, str], list[str]]:
        spelling_raw = data.mapping(data.root, "spelling")
        spelling: dict[str, str] = {}
        for k, v in spelling_raw.items():
            if not isinstance(v, str) or not v.strip():
                raise data.error(f"spelling.{k}", "must map a word to a non-empty replacement")
            spelling[str(k).lower().translate(_APOSTROPHES)] = v.lower().translate(_APOSTROPHES)
        emoji_raw = data.mapping(data.root, "emoji")
        emoji: dict[str, str] = {}
        for k, v in emoji_raw.items():
            key = "".join(ch for ch in str(k) if ch not in _EMOJI_MODIFIERS)
            if not isinstance(v, str) or not re.fullmatch(r"[a-z]+", v):
                raise data.error(f"emoji.{k}", "must map an emoji to one lower-case word")
            for ch in key:
                emoji[ch] = v
        tolerant = [w.lower() for w in data.str_list(data.root, "typo_tolerant")]
        return spelling, emoji, tolerant

    @classmethod
    def from_data(cls, data: DataFile, normalizer: Normalizer, canned: CannedMatcher) -> Classifier:
        word = normalizer.literal

        def phrase_set(node: Mapping[str, Any], key: str, where: str,
                       *, required: bool = True) -> PhraseSet:
            phrases = data.str_list(node, key, where, required=required)
            regex = data.str_list(node, "regex", where, required=False, non_empty=False) \
                if key == "phrases" else []
            return PhraseSet.build(phrases, regex, word, data, f"{where}.{key}".lstrip("."))

        root = data.root
        crisis_node = data.mapping(root, "crisis")
        crisis = phrase_set(crisis_node, "phrases", "crisis")

        rules_raw = data.get(root, "rules", "")
        if not isinstance(rules_raw, list) or not rules_raw:
            raise data.error("rules", "must be a non-empty list of rules")
        rules: list[_Rule] = []
        for i, node in enumerate(rules_raw):
            where = f"rules[{i}]"
            if not isinstance(node, dict):
                raise data.error(where, "must be a mapping with type, why, phrases")
            mtype = _message_type(data, data.get(node, "type", where), f"{where}.type")
            if mtype is MessageType.CRISIS:
                raise data.error(f"{where}.type", "CRISIS language belongs under 'crisis'")
            why = data.get(node, "why", where)
            if not isinstance(why, str) or not why.strip():
                raise data.error(f"{where}.why", "must be a short sentence")
            rules.append(_Rule(mtype, why.strip(), phrase_set(node, "phrases", where),
                               phrase_set(node, "unless", where, required=False)))

        coach = data.mapping(root, "coach_turns")
        threads_raw = data.get(coach, "open_threads", "coach_turns")
        if not isinstance(threads_raw, list) or not threads_raw:
            raise data.error("coach_turns.open_threads", "must be a non-empty list")
        threads: list[_ThreadRule] = []
        for i, node in enumerate(threads_raw):
            where = f"coach_turns.open_threads[{i}]"
            if not isinstance(node, dict):
                raise data.error(where, "must be a mapping with type, phrases")
            mtype = _message_type(data, data.get(node, "type", where), f"{where}.type")
            proposal = bool(node.get("proposal", False))
            threads.append(_ThreadRule(mtype, proposal, phrase_set(node, "phrases", where)))

        replies = data.mapping(root, "short_replies")
        filler = data.str_list(replies, "filler", "short_replies")
        max_words = replies.get("max_words", 5)
        if not isinstance(max_words, int) or max_words < 1:
            raise data.error("short_replies.max_words", "must be a positive integer")
        affirmative = WholeMessageMatcher.build(
            data.str_list(replies, "affirmative", "short_replies"), filler, max_words,
            word, data, "short_replies.affirmative")
        negative = WholeMessageMatcher.build(
            data.str_list(replies, "negative", "short_replies"), filler, max_words,
            word, data, "short_replies.negative")

        limits = data.mapping(root, "limits")
        long_words = limits.get("long_message_words")
        short_greeting = limits.get("short_greeting_words")
        for key, value in (("long_message_words", long_words),
                           ("short_greeting_words", short_greeting)):
            if not isinstance(value, int) or value < 1:
                raise data.error(f"limits.{key}", "must be a positive integer")
        assert isinstance(long_words, int) and isinstance(short_greeting, int)

        return cls(
            normalizer=normalizer,
            canned=canned,
            crisis=crisis,
            rules=tuple(rules),
            greeting_words=phrase_set(data.mapping(root, "greeting_words"), "phrases",
                                      "greeting_words"),
            did_you_questions=phrase_set(coach, "did_you_questions", "coach_turns"),
            simple_questions=phrase_set(coach, "simple_questions", "coach_turns"),
            threads=tuple(threads),
            affirmative=affirmative,
            negative=negative,
            long_message_words=long_words,
            short_greeting_words=short_greeting,
            short_reply_words=max_words,
        )

    # -- classifying ----------------------------------------------------------------

    def classify(self, message: str, history: Sequence[PriorTurn] = ()) -> Classification:
        """Classify one user message given the recent turns (oldest first)."""
        return self.classify_normalized(self.normalizer.normalize(message), history)

    def emotional(self, norm: NormalizedText) -> bool:
        """Whether the message speaks of feelings or life-level trouble (the DEEP_COACHING
        rules' phrases), whatever type it was classified as: "I keep sabotaging myself, I
        think I'm scared to succeed" is a pattern question, and an emotional one."""
        text = norm.text
        return any(rule.message_type is MessageType.DEEP_COACHING
                   and rule.phrases.search(text) is not None and rule.unless.search(text) is None
                   for rule in self.rules)

    def classify_normalized(self, norm: NormalizedText,
                            history: Sequence[PriorTurn] = ()) -> Classification:
        text = norm.text
        hit = self.crisis.search(text)
        if hit is not None:
            return Classification(MessageType.CRISIS, f"crisis language ({hit!r})")

        own = self._own(norm)
        coach = history[-1].text if history and history[-1].role == "coach" else ""
        if not coach:
            return own

        turn = self.read_coach_turn(coach)
        # A yes/no answer to "did u do it?" is a completion or a miss.
        if turn.did_you_question:
            if self.affirmative.matches(norm) or (
                own.canned_eligible and own.message_type is MessageType.CHECK_IN
            ):
                return Classification(MessageType.CHECK_IN,
                                      "yes to the coach's check-in: a completion",
                                      canned_eligible=True, did_you_answer="yes")
            if self.negative.matches(norm):
                return Classification(MessageType.ACCOUNTABILITY,
                                      "no to the coach's check-in: a missed commitment",
                                      did_you_answer="no")
            return own
        if turn.simple_question:
            return own
        thread = turn.open_thread
        if thread is None:
            return own
        if own.canned_eligible and own.message_type is not MessageType.ACKNOWLEDGEMENT:
            # "hey", "done ✅", "tired": a whole message of its own, not an answer that
            # needs the coach's question to be understood.
            return own
        if own.message_type in COMPLEX_TYPES:
            return Classification(own.message_type, own.reason + "; answers the coach's "
                                  "open question", continues_thread=True)
        if own.message_type is MessageType.ACKNOWLEDGEMENT or (own.generic and not norm.question and (
            # "yes", "probably the weekends": meaningful only as an answer.
            len(norm.tokens) <= self.short_reply_words
            # A story no rule recognizes, told in answer to a reflective question
            # ("My manager yelled at me in front of everyone"), is the coaching itself.
            or thread in (MessageType.DEEP_COACHING, MessageType.PATTERN_ANALYSIS)
        )):
            return Classification(
                thread,
                f"reply to the coach's open {thread.name.lower().replace('_', ' ')} question",
                continues_thread=True,
            )
        return own

    def read_coach_turn(self, text: str) -> CoachTurn:
        """What the coach's turn ``text`` asks of the next reply; kept, so reading the same turn
        again (the router reads its own answers ahead, off the reply's path) is a lookup."""
        turn = self._coach_turns.get(text)
        if turn is None:
            turn = self._read_coach_turn(self.normalizer.normalize(text))
            if len(self._coach_turns) >= COACH_TURNS_KEPT:
                del self._coach_turns[next(iter(self._coach_turns))]
            self._coach_turns[text] = turn
        return turn

    def _read_coach_turn(self, coach: NormalizedText) -> CoachTurn:
        if self.did_you_questions.search(coach.text) is not None:
            return CoachTurn(did_you_question=True)
        if self.simple_questions.search(coach.text) is not None:
            return CoachTurn(simple_question=True)
        for rule in self.threads:
            if (coach.question or rule.proposal) and rule.phrases.search(coach.text) is not None:
                return CoachTurn(open_thread=rule.message_type)
        return CoachTurn()

    def _own(self, norm: NormalizedText) -> Classification:
        text = norm.text
        canned_type = self.canned.whole_message_type(norm)
        if canned_type is not None:
            return Classification(canned_type, f"whole message is canned-eligible ({canned_type.name})",
                                  canned_eligible=True)
        found = self._rule_index.first_rule(text)
        if found is not None:
            rule, hit = found
            return Classification(rule.message_type, f"{rule.why} ({hit!r})")
        if norm.question:
            return Classification(MessageType.QUESTION, "asks a question")
        n = len(norm.tokens)
        if n <= self.short_greeting_words and self.greeting_words.search(text) is not None:
            return Classification(MessageType.GREETING, "a short greeting with a little more in it")
        if n >= self.long_message_words:
            return Classification(MessageType.DEEP_COACHING,
                                  f"a long message ({n} words) deserves the coach's memory")
        if n == 0:
            return Classification(MessageType.CHECK_IN, "no words (only symbols)")
        return Classification(MessageType.CHECK_IN, "an everyday update", generic=True)
