"""The classifier's ordered rules, the coach-turn rules and the one-scan index over them."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.router.classifier.datafile import DataFile
from services.router.classifier.memo import WordMemo
from services.router.classifier.normalize import NormalizedText
from services.router.classifier.phrases import REMEMBERED_WORDS, PhraseSet
from services.router.classifier.vocabulary import MessageType


@dataclass(frozen=True)
class Rule:
    message_type: MessageType
    why: str
    phrases: PhraseSet
    unless: PhraseSet


@dataclass(frozen=True)
class ThreadRule:
    message_type: MessageType
    proposal: bool
    phrases: PhraseSet



def message_type(data: DataFile, value: Any, where: str) -> MessageType:
    name = str(value).removeprefix("MESSAGE_TYPE_")
    try:
        return MessageType[name]
    except KeyError:
        known = ", ".join(t.name for t in MessageType)
        raise data.error(where, f"unknown message type {value!r} (known: {known})") from None


class CannedMatcher(Protocol):
    """What the classifier needs from the canned sets (implemented in ``patterns.py``)."""

    def whole_message_type(self, norm: NormalizedText) -> MessageType | None:
        """The type of canned set the whole message fits, if any."""
        ...



@dataclass(frozen=True)
class RuleIndex:
    """The indexed phrases of the classifier's ordered rules in one table, so that a message
    is scanned once for all of them instead of once per rule (``first_rule``)."""

    rules: tuple[Rule, ...]
    by_first: Mapping[str, tuple[tuple[int, re.Pattern[str]], ...]]
    by_prefix: Mapping[str, tuple[tuple[int, re.Pattern[str]], ...]]
    with_rest: tuple[int, ...]  # rules with any-word phrases (``PhraseSet.rest``)
    # Each word's non-empty candidate lists (by word, then by prefix), remembered as in
    # ``PhraseSet``.
    _by_word: WordMemo[tuple[tuple[tuple[int, re.Pattern[str]], ...], ...]] = field(
        default_factory=lambda: WordMemo(REMEMBERED_WORDS), init=False, repr=False,
        compare=False)

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> RuleIndex:
        by_first: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
        by_prefix: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
        for i, rule in enumerate(rules):  # rule by rule, in order: each keeps its phrase order
            for key, patterns in rule.phrases.by_first.items():
                by_first.setdefault(key, []).extend((i, rx) for rx in patterns)
            for key, patterns in rule.phrases.by_prefix.items():
                by_prefix.setdefault(key, []).extend((i, rx) for rx in patterns)
        return cls(tuple(rules), {k: tuple(v) for k, v in by_first.items()},
                   {k: tuple(v) for k, v in by_prefix.items()},
                   tuple(i for i, rule in enumerate(rules) if rule.phrases.rest is not None))

    def first_rule(self, text: str) -> tuple[Rule, str] | None:
        """The first rule whose phrases occur in ``text`` and whose ``unless`` phrases do
        not, with the phrase that matched: what taking the rules in order with
        ``PhraseSet.search`` gives, in one scan of the message that stops trying a rule once
        an earlier one is known to apply."""
        rules, remembered = self.rules, self._by_word
        best, best_hit = len(rules), ""
        judged: set[int] = set()  # rules whose first indexed match was found (kept or vetoed)
        pos = 0
        for token in text.split(" "):
            # As in PhraseSet.search: at each word a rule's by-word phrases, then its
            # by-prefix ones; the candidates are in rule order.
            lists = remembered.get(token)
            if lists is None:
                lists = self._candidates(token)
            for candidates in lists:
                for i, rx in candidates:
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
        for i in self.with_rest:
            if i >= best:
                break
            if i not in judged:
                hit = rules[i].phrases.search_rest(text)
                if hit is not None and rules[i].unless.search(text) is None:
                    return rules[i], hit
        return (rules[best], best_hit) if best < len(rules) else None

    def _candidates(self, token: str) -> tuple[tuple[tuple[int, re.Pattern[str]], ...], ...]:
        return self._by_word.remember(token, tuple(
            c for c in (self.by_first.get(token), self.by_prefix.get(token[:3])) if c))
