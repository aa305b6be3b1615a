"""Canned replies: which set fits a message, and which reply of that set to send.

Sets, their triggers and their replies live in ``data/patterns.yaml`` so that
operators can edit them without code; the file is validated when the router
starts (:class:`CannedReplies.from_data` raises :class:`ConfigError`).

The rules a newcomer needs:

* A set answers a message only when the **whole** message is that kind of
  message: at least one of the set's ``triggers`` and otherwise only words from
  the set's ``allowed`` list or the global ``filler`` list, at most ``max_words``
  words. "hey coach" is a greeting; "hey coach, can u help me plan my week" is not.
* ``never_canned`` phrases veto canned replies outright ("im done" may mean
  more than a finished workout).
* ``hours: [start, end]`` (inclusive, wrapping past midnight) picks among sets of
  the same message type by the **user's** local hour; sets of one type that use
  hours must cover all 24 hours exactly once.
* ``min_streak`` keeps a set for users on a streak (the completion set needs
  ``current_streak >= 3``; below that the message goes to the cheap tier).
* A reply is picked deterministically from a seed, never equal to the user's
  previous canned reply, so a set needs at least two distinct replies.
* Filler and allowed words may not be negations ("not", "didnt", ...): "not
  done" must never read as "done".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.router.classifier import (
    DataFile,
    MessageType,
    NormalizedText,
    Normalizer,
    PhraseSet,
    WholeMessageMatcher,
    phrase_words,
    stable_index,
)

__all__ = ["NEGATIONS", "CannedReplies", "CannedSet"]

# Words that flip meaning; they may never be filler or allowed words of a set.
NEGATIONS = frozenset({
    "not", "no", "never", "nothing", "without", "didnt", "dont", "doesnt", "cant", "cannot",
    "couldnt", "wont", "wouldnt", "havent", "hasnt", "hadnt", "isnt", "wasnt", "arent",
    "werent", "nope", "nah", "barely", "hardly", "yet", "almost",
})

# Types a canned set may answer: everything else needs a tailored reply.
CANNED_TYPES = frozenset({
    MessageType.GREETING, MessageType.ACKNOWLEDGEMENT, MessageType.CHECK_IN,
    MessageType.CELEBRATION, MessageType.STRUGGLING,
})


@dataclass(frozen=True)
class CannedSet:
    """One named set of canned replies (``greeting_morning``, ``completion``, ...)."""

    name: str
    message_type: MessageType
    replies: tuple[str, ...]
    hours: frozenset[int] | None
    min_streak: int
    matcher: WholeMessageMatcher

    def pick_reply(self, seed: str, avoid: str = "") -> str:
        """A reply chosen by ``seed``, never ``avoid`` (the user's previous canned reply)."""
        choices = [r for r in self.replies if r.strip() != avoid.strip()] or list(self.replies)
        return choices[stable_index(seed, len(choices))]


def _hours(data: DataFile, value: Any, where: str) -> frozenset[int] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(h, int) and 0 <= h <= 23 for h in value)):
        raise data.error(where, "must be [start, end]: two hours 0-23, inclusive, "
                                "wrapping past midnight (e.g. [17, 4])")
    start, end = value
    if start <= end:
        return frozenset(range(start, end + 1))
    return frozenset(list(range(start, 24)) + list(range(end + 1)))


class CannedReplies:
    """All canned sets, loaded once; immutable after construction."""

    def __init__(self, sets: Sequence[CannedSet], never_canned: PhraseSet,
                 fallback: tuple[str, ...], crisis_fallback: tuple[str, ...]) -> None:
        self.sets = tuple(sets)
        self.never_canned = never_canned
        # Sent when the upstream fails (ROUTE_FALLBACK); crisis ones point to help.
        self.fallback = fallback
        self.crisis_fallback = crisis_fallback
        # Sets sharing triggers (the three greeting sets) share one matcher: test it once.
        groups: dict[int, tuple[WholeMessageMatcher, list[CannedSet]]] = {}
        for s in self.sets:
            groups.setdefault(id(s.matcher), (s.matcher, []))[1].append(s)
        self._groups = tuple((m, tuple(ss)) for m, ss in groups.values())

    @property
    def replies(self) -> frozenset[str]:
        return frozenset(r for s in self.sets for r in s.replies)

    @staticmethod
    def vocabulary(data: DataFile) -> set[str]:
        words: set[str] = set(phrase_words(data.str_list(data.root, "filler")))
        for node in data.mapping(data.root, "sets").values():
            if isinstance(node, dict):
                for key in ("triggers", "allowed"):
                    items = node.get(key) or []
                    if isinstance(items, list):
                        words.update(phrase_words(str(i) for i in items))
        return words

    @classmethod
    def from_data(cls, data: DataFile, normalizer: Normalizer) -> CannedReplies:
        word = normalizer.literal
        root = data.root
        filler = data.str_list(root, "filler")
        cls._check_no_negation(data, filler, "filler", normalizer)
        never = PhraseSet.build(data.str_list(root, "never_canned", required=False,
                                              non_empty=False), [], word, data, "never_canned")
        default_max = root.get("max_words", 6)
        if not isinstance(default_max, int) or default_max < 1:
            raise data.error("max_words", "must be a positive integer")

        sets_node = data.mapping(root, "sets")
        if not sets_node:
            raise data.error("sets", "must define at least one canned set")
        matchers: dict[tuple[tuple[str, ...], tuple[str, ...], int], WholeMessageMatcher] = {}
        sets: list[CannedSet] = []
        for name, node in sets_node.items():
            where = f"sets.{name}"
            if not isinstance(node, dict):
                raise data.error(where, "must be a mapping with message_type, triggers, replies")
            raw_type = data.get(node, "message_type", where)
            try:
                mtype = MessageType[str(raw_type).removeprefix("MESSAGE_TYPE_")]
            except KeyError:
                raise data.error(f"{where}.message_type",
                                 f"unknown message type {raw_type!r}") from None
            if mtype not in CANNED_TYPES:
                allowed_names = ", ".join(sorted(t.name for t in CANNED_TYPES))
                raise data.error(f"{where}.message_type",
                                 f"{mtype.name} needs a tailored reply; canned sets may only "
                                 f"answer {allowed_names}")
            triggers = data.str_list(node, "triggers", where)
            allowed = data.str_list(node, "allowed", where, required=False, non_empty=False)
            cls._check_no_negation(data, triggers, f"{where}.triggers", normalizer)
            cls._check_no_negation(data, allowed, f"{where}.allowed", normalizer)
            replies = data.str_list(node, "replies", where)
            if len({r.strip() for r in replies}) < 2:
                raise data.error(f"{where}.replies", "needs at least two different replies "
                                 "(a user never gets the same canned reply twice in a row)")
            max_words = node.get("max_words", default_max)
            if not isinstance(max_words, int) or max_words < 1:
                raise data.error(f"{where}.max_words", "must be a positive integer")
            min_streak = node.get("min_streak", 0)
            if not isinstance(min_streak, int) or min_streak < 0:
                raise data.error(f"{where}.min_streak", "must be a non-negative integer")
            key = (tuple(triggers), tuple(allowed), max_words)
            if key not in matchers:
                matchers[key] = WholeMessageMatcher.build(
                    triggers, list(allowed) + filler, max_words, word, data, where)
            sets.append(CannedSet(
                name=str(name), message_type=mtype,
                replies=tuple(r.strip() for r in replies),
                hours=_hours(data, node.get("hours"), f"{where}.hours"),
                min_streak=min_streak, matcher=matchers[key],
            ))
        cls._check_hours(data, sets)
        fallback_node = data.mapping(root, "fallback")
        fallback = tuple(r.strip() for r in data.str_list(fallback_node, "replies", "fallback"))
        crisis = tuple(r.strip() for r in data.str_list(fallback_node, "crisis_replies", "fallback"))
        return cls(sets, never, fallback, crisis)

    @staticmethod
    def _check_no_negation(data: DataFile, items: Sequence[str], where: str,
                           normalizer: Normalizer) -> None:
        for i, item in enumerate(items):
            bad = NEGATIONS.intersection(normalizer.literal(item))
            if bad and len(normalizer.literal(item)) == 1:
                raise data.error(f"{where}[{i}]", f"{item!r} is a negation: 'not done' must "
                                 "never read as 'done'")

    @staticmethod
    def _check_hours(data: DataFile, sets: Sequence[CannedSet]) -> None:
        by_type: dict[MessageType, list[CannedSet]] = {}
        for s in sets:
            if s.hours is not None:
                by_type.setdefault(s.message_type, []).append(s)
        for mtype, timed in by_type.items():
            seen: dict[int, str] = {}
            for s in timed:
                assert s.hours is not None
                for h in sorted(s.hours):
                    if h in seen:
                        raise data.error(f"sets.{s.name}.hours",
                                         f"hour {h} is already covered by sets.{seen[h]}")
                    seen[h] = s.name
            missing = sorted(set(range(24)) - set(seen))
            if missing:
                raise data.error(f"sets.{timed[0].name}.hours",
                                 f"{mtype.name} sets leave hours {missing} uncovered")

    # -- use ------------------------------------------------------------------------

    def whole_message_type(self, norm: NormalizedText) -> MessageType | None:
        """The type of the first set the whole message fits, or None."""
        for matcher, sets in self._groups:
            if matcher.matches(norm):
                if self.never_canned.search(norm.text) is not None:
                    return None
                return sets[0].message_type
        return None

    def choose(self, message_type: MessageType, norm: NormalizedText, local_hour: int,
               streak: int, *, require_match: bool = True) -> tuple[CannedSet | None, str]:
        """The set that answers this message, or None with the reason why not."""
        if self.never_canned.search(norm.text) is not None:
            return None, "a never-canned phrase"
        why_not = f"no canned set for {message_type.name}"
        for s in self.sets:
            if s.message_type is not message_type:
                continue
            if require_match and not s.matcher.matches(norm):
                continue
            if s.hours is not None and local_hour not in s.hours:
                continue
            if streak < s.min_streak:
                why_not = f"{s.name} needs a streak of {s.min_streak}, user has {streak}"
                continue
            return s, ""
        return None, why_not
