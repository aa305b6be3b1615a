"""The rule-based classifier: what kind of message this is (see the package docstring)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.router.classifier.datafile import DataFile
from services.router.classifier.normalize import (
    APOSTROPHES,
    EMOJI_MODIFIERS,
    NormalizedText,
    Normalizer,
)
from services.router.classifier.phrases import PhraseSet, WholeMessageMatcher, phrase_words
from services.router.classifier.rules import (
    CannedMatcher,
    Rule,
    RuleIndex,
    ThreadRule,
    message_type,
)
from services.router.classifier.vocabulary import COMPLEX_TYPES, MessageType, PriorTurn


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
class CoachTurn:
    """What a coach's turn asks of the reply that follows it (a function of its text alone)."""

    safety_question: bool = False  # "are you safe right now?": any reply stays a crisis turn
    did_you_question: bool = False  # "did u do it?": a yes is a completion, a no a miss
    simple_question: bool = False  # the reply is read on its own
    offer: bool = False  # "want a quick breakfast idea?": a yes asks for what was offered
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
    rules: tuple[Rule, ...]
    greeting_words: PhraseSet
    did_you_questions: PhraseSet
    simple_questions: PhraseSet
    offers: PhraseSet
    threads: tuple[ThreadRule, ...]
    safety_questions: PhraseSet
    affirmative: WholeMessageMatcher
    negative: WholeMessageMatcher
    long_message_words: int
    short_greeting_words: int
    # A reply this short to a coach's open question is read as an answer to it.
    short_reply_words: int = 5
    _coach_turns: dict[str, CoachTurn] = field(default_factory=dict, init=False, repr=False,
                                               compare=False)
    _rule_index: RuleIndex = field(init=False, repr=False, compare=False)
    # The DEEP_COACHING rules alone: whether a message speaks of feelings, in one scan.
    _feelings_index: RuleIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rule_index", RuleIndex.of(self.rules))
        object.__setattr__(self, "_feelings_index", RuleIndex.of(
            [r for r in self.rules if r.message_type is MessageType.DEEP_COACHING]))

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
                    if key not in ("spelling", "emoji", "regex", "why", "type", "not_typos",
                                   "second_opinion"):
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
            spelling[str(k).lower().translate(APOSTROPHES)] = v.lower().translate(APOSTROPHES)
        emoji_raw = data.mapping(data.root, "emoji")
        emoji: dict[str, str] = {}
        for k, v in emoji_raw.items():
            key = "".join(ch for ch in str(k) if ch not in EMOJI_MODIFIERS)
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
        rules: list[Rule] = []
        for i, node in enumerate(rules_raw):
            where = f"rules[{i}]"
            if not isinstance(node, dict):
                raise data.error(where, "must be a mapping with type, why, phrases")
            mtype = message_type(data, data.get(node, "type", where), f"{where}.type")
            if mtype is MessageType.CRISIS:
                raise data.error(f"{where}.type", "CRISIS language belongs under 'crisis'")
            why = data.get(node, "why", where)
            if not isinstance(why, str) or not why.strip():
                raise data.error(f"{where}.why", "must be a short sentence")
            rules.append(Rule(mtype, why.strip(), phrase_set(node, "phrases", where),
                               phrase_set(node, "unless", where, required=False)))

        coach = data.mapping(root, "coach_turns")
        threads_raw = data.get(coach, "open_threads", "coach_turns")
        if not isinstance(threads_raw, list) or not threads_raw:
            raise data.error("coach_turns.open_threads", "must be a non-empty list")
        threads: list[ThreadRule] = []
        for i, node in enumerate(threads_raw):
            where = f"coach_turns.open_threads[{i}]"
            if not isinstance(node, dict):
                raise data.error(where, "must be a mapping with type, phrases")
            mtype = message_type(data, data.get(node, "type", where), f"{where}.type")
            proposal = bool(node.get("proposal", False))
            threads.append(ThreadRule(mtype, proposal, phrase_set(node, "phrases", where)))

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
            offers=phrase_set(coach, "offers", "coach_turns"),
            threads=tuple(threads),
            safety_questions=phrase_set(coach, "safety_questions", "coach_turns"),
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
        return self._feelings_index.first_rule(norm.text) is not None

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
        if turn.safety_question:
            # "yes" to "do you mean you're thinking about ending your life?" says more than
            # any message could alone: the safety conversation stays where it started.
            return Classification(MessageType.CRISIS, "a reply to the coach's safety question")
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
            if turn.offer and self.affirmative.matches(norm):
                # "yes pls" to "want a quick breakfast idea?" asks for the idea: a canned
                # "Anytime." would ignore it. A model with the recent turns makes it good.
                return Classification(MessageType.QUESTION,
                                      "yes to the coach's offer: asks for what was offered")
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
        if self.safety_questions.search(coach.text) is not None:
            return CoachTurn(safety_question=True)
        if self.did_you_questions.search(coach.text) is not None:
            return CoachTurn(did_you_question=True)
        if self.simple_questions.search(coach.text) is not None:
            return CoachTurn(simple_question=True)
        for rule in self.threads:
            if (coach.question or rule.proposal) and rule.phrases.search(coach.text) is not None:
                return CoachTurn(open_thread=rule.message_type)
        return CoachTurn(offer=coach.question and self.offers.search(coach.text) is not None)

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
