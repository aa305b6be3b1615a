"""The routing decision: one function, :meth:`Router.decide`, reads top to bottom.

Given a message and what we know about the user, decide how to answer it:

1. **Crisis** (self-harm, suicidal ideation, disordered eating) → the stateful
   tier with ``crisis=True``, on the tier's own model (never a per-type one).
   Nothing overrides this: not the policy, not the message count, not a canned set.
2. **Baseline policy** (the unoptimized setup we measure against, docs/origin.md) → every
   message on the stateful tier with the strong model (the tier's own model,
   whatever per-type model ``tiers.yaml`` gives the optimized policy).
3. **Onboarding**: a user's first ``onboarding_messages`` messages (by default the
   first 3) → the stateful tier, to build the relationship.
4. **Open coaching thread**: a reply to the coach's reflective or plan question
   ("probably the weekends", "sure let's do it") → the stateful tier, typed after
   the thread.
5. **Canned**: the whole message is a greeting, acknowledgement, completion or
   brief struggle, and a set fits (greeting set by the user's local hour;
   completion needs a streak) → a canned reply, never the user's previous one.
6. Otherwise by type (``tiers.yaml``): stateful types (goal setting, pattern
   analysis, deep coaching, accountability, longer struggles) → the stateful
   tier.
7. **Second opinion** on what is left for the cheap tier: the learned ``stateful``
   head (``classifier/learned.py``) scores "does this need the coach's memory and
   judgement?"; at or above ``escalate_at`` (``classifier.yaml``) → the stateful
   tier, typed by the learned type head. Else the cheap tier.

The learned crisis head is asked about every message right after the rules' crisis
check (1): at or above ``crisis_at`` it adds CRISIS; a long message (``sentence_min_words``)
is also scored a sentence at a time, and one sentence at or above ``sentence_crisis_at``
adds CRISIS too. The learned layer only ever
escalates: it never sends a message to a cheaper route or removes CRISIS.

A stateful turn (3, 4, 6) gets its type's model from ``tiers.yaml``, unless the
message speaks of feelings (the classifier's DEEP_COACHING phrases: "scared",
"I feel like a failure", "overwhelmed"...): anything emotional gets the
stateful tier's own, strongest model, whatever its type; and a goal set with fear in
it ("quit my job for my startup but I'm scared") is deep coaching, which carries no tools.

Usage::

    router = Router.from_files()                      # once, at start-up
    decision = router.decide("hey", MessageContext(current_streak=4, local_hour=8,
                                                   message_count=12))
    decision.route, decision.pattern, decision.canned_reply
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.router.classifier import (
    Classification,
    Classifier,
    ConfigError,
    DataFile,
    MessageType,
    NormalizedText,
    Normalizer,
    PriorTurn,
)
from services.router.classifier.learned import Heads, Opinion, RuleSignals, SecondOpinion
from services.router.localtime import InvalidLocalTimeError, user_local_hour
from services.router.patterns import CannedReplies
from services.router.tiers import CallSettings, Route, Tiers

__all__ = [
    "DATA_DIR",
    "ConfigError",
    "Decision",
    "Escalation",
    "InvalidLocalTimeError",
    "MessageContext",
    "MessageType",
    "Policy",
    "PriorTurn",
    "Route",
    "Router",
    "user_local_hour",
]

DATA_DIR = Path(__file__).resolve().parent / "data"


class Policy(enum.Enum):
    """``optimized`` (this router) or ``baseline`` (every message on the strong stateful tier,
    the comparison point; docs/glossary.md)."""

    OPTIMIZED = "optimized"
    BASELINE = "baseline"


@dataclass(frozen=True)
class MessageContext:
    """What the router knows about the user when the message arrives.

    ``message_count`` is how many messages the user sent before this one;
    ``history`` the recent turns, oldest first; ``last_canned_reply`` the last
    canned reply this user got (never sent twice in a row).
    """

    display_name: str = ""
    current_streak: int = 0
    local_hour: int | None = None
    timezone: str = ""
    message_count: int = 0
    history: tuple[PriorTurn, ...] = ()
    last_canned_reply: str = ""


@dataclass(frozen=True)
class Decision:
    """How to answer one message.

    For ``Route.PATTERN``: ``pattern`` names the canned set and ``canned_reply``
    is the text to send; ``model`` is "" and the token/temperature fields are 0.
    For the two upstream tiers: ``model``, ``max_output_tokens`` and
    ``temperature`` are the call's settings. ``reason`` is for humans and logs.
    """

    route: Route
    message_type: MessageType
    pattern: str
    canned_reply: str
    model: str
    max_output_tokens: int
    temperature: float
    reason: str
    crisis: bool


# Where a long message splits into sentences: after . ! ? ; or an ellipsis, at a line
# break, a dash between spaces, or ", and / but / also / plus" (run-on messages).
_SENTENCE_BREAK = re.compile(r"(?<=[.!?;…])\s+|\n+|\s+[-–—]\s+|,\s+(?:and|but|also|plus)\s+")
SENTENCE_MIN_TOKENS = 3  # a shorter piece says too little to score alone


def sentences(message: str) -> list[str]:
    """The sentences of ``message`` as the crisis head reads a long one."""
    return [part for part in _SENTENCE_BREAK.split(message) if part and not part.isspace()]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Escalation:
    """The learned heads and the scores at which they act (``classifier.yaml``
    ``second_opinion``)."""

    heads: Heads
    escalate_at: float
    crisis_at: float
    feelings_at: float
    # A message of at least ``sentence_min_words`` words is also scored a sentence at a time
    # by the crisis head; one sentence at or above ``sentence_crisis_at`` adds CRISIS. No
    # defaults: a zero would split every message, a 1.0 would flag no sentence.
    sentence_crisis_at: float
    sentence_min_words: int

    @classmethod
    def from_data(cls, data: DataFile) -> Escalation:
        node = data.mapping(data.root, "second_opinion")
        name = data.get(node, "file", "second_opinion")
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise data.error("second_opinion.file", "must be a file name beside this one")
        limits: dict[str, float] = {}
        for key in ("escalate_at", "crisis_at", "feelings_at", "sentence_crisis_at"):
            value = data.get(node, key, "second_opinion")
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 0.0 < float(value) <= 1.0:
                raise data.error(f"second_opinion.{key}", "must be a number in (0, 1]")
            limits[key] = float(value)
        words = data.get(node, "sentence_min_words", "second_opinion")
        if isinstance(words, bool) or not isinstance(words, int) or words < 2:
            raise data.error("second_opinion.sentence_min_words", "must be a whole number >= 2")
        heads = SecondOpinion.load(data.path.parent / name)
        return cls(heads, sentence_min_words=words, **limits)


class Router:
    """The router's domain logic, loaded once from the data files; immutable."""

    def __init__(self, classifier: Classifier, canned: CannedReplies, tiers: Tiers,
                 escalation: Escalation | None, *,
                 onboarding_messages: int = 3, policy: Policy = Policy.OPTIMIZED,
                 now: Callable[[], datetime] = _utc_now) -> None:
        self._classifier = classifier
        self._escalation = escalation
        self._canned = canned
        self._tiers = tiers
        self._onboarding = onboarding_messages
        self._policy = policy
        self._now = now

    @classmethod
    def from_files(cls, data_dir: Path | str | None = None, *, onboarding_messages: int = 3,
                   policy: str | Policy = "optimized",
                   now: Callable[[], datetime] = _utc_now,
                   second_opinion: bool = True) -> Router:
        """Load and validate ``classifier.yaml``, ``patterns.yaml``, ``tiers.yaml`` and the
        learned heads ``classifier.yaml`` names (``second_opinion=False``: the rules alone,
        as training compares them).

        Raises :class:`ConfigError` naming the file, the key and the problem.
        """
        folder = Path(data_dir) if data_dir is not None else DATA_DIR
        try:
            chosen = policy if isinstance(policy, Policy) else Policy(str(policy).strip().lower())
        except ValueError:
            raise ConfigError("COACH_POLICY", "policy",
                              f"{policy!r} is not 'optimized' or 'baseline'") from None
        if isinstance(onboarding_messages, bool) or not isinstance(onboarding_messages, int) \
                or onboarding_messages < 0:
            raise ConfigError("settings", "onboarding_messages", "must be an integer >= 0")
        classifier_data = DataFile(folder / "classifier.yaml")
        patterns_data = DataFile(folder / "patterns.yaml")
        tiers_data = DataFile(folder / "tiers.yaml")

        spelling, emoji, tolerant = Classifier.normalizer_tables(classifier_data)
        vocabulary = Classifier.vocabulary(classifier_data) | CannedReplies.vocabulary(patterns_data)
        normalizer = Normalizer(spelling=spelling, emoji=emoji, typo_tolerant=tolerant,
                                vocabulary=vocabulary)
        canned = CannedReplies.from_data(patterns_data, normalizer)
        classifier = Classifier.from_data(classifier_data, normalizer, canned)
        tiers = Tiers.from_data(tiers_data)
        escalation = Escalation.from_data(classifier_data) if second_opinion else None
        return cls(classifier, canned, tiers, escalation,
                   onboarding_messages=onboarding_messages, policy=chosen, now=now)

    def with_escalation(self, escalation: Escalation | None) -> Router:
        """The same rules and tiers with other learned heads or thresholds (evaluation)."""
        return Router(self._classifier, self._canned, self._tiers, escalation,
                      onboarding_messages=self._onboarding, policy=self._policy, now=self._now)

    @property
    def escalation(self) -> Escalation | None:
        return self._escalation

    def fallback_replies(self, crisis: bool) -> tuple[str, ...]:
        """Replies for when the upstream cannot answer (``patterns.yaml`` ``fallback``)."""
        return self._canned.crisis_fallback if crisis else self._canned.fallback

    @property
    def policy(self) -> Policy:
        return self._policy

    def models(self) -> frozenset[str]:
        """Every model a decision may name (for checking prices at start-up)."""
        return self._tiers.models()

    def read_coach_turn(self, text: str) -> None:
        """Reads a coach's turn ahead (it is kept), so deciding the message that answers it
        does not have to."""
        self._classifier.read_coach_turn(text)

    def classify(self, message: str, history: tuple[PriorTurn, ...] = ()) -> Classification:
        """The rules' verdict alone (no tier choice, no second opinion)."""
        return self._classifier.classify(message, history)

    def normalize(self, message: str) -> NormalizedText:
        return self._classifier.normalizer.normalize(message)

    def rule_signals(self, norm: NormalizedText, verdict: Classification) -> RuleSignals:
        """What the learned heads are told of the rules' reading."""
        return RuleSignals(verdict.message_type, self._classifier.emotional(norm),
                           verdict.canned_eligible)

    def opinion(self, message: str, history: tuple[PriorTurn, ...] = ()) -> Opinion | None:
        """The learned heads' scores for ``message`` (None when loaded without them)."""
        if self._escalation is None:
            return None
        return self._heads_opinion(self.normalize(message), history)

    def _heads_opinion(self, norm: NormalizedText, history: tuple[PriorTurn, ...]) -> Opinion:
        assert self._escalation is not None
        verdict = self._classifier.classify_normalized(norm, history)
        return self._escalation.heads.opinion(norm, self.rule_signals(norm, verdict))

    def decide(self, message: str, ctx: MessageContext) -> Decision:
        """Decide how to answer ``message``; the steps are in the module docstring.

        Raises :class:`InvalidLocalTimeError` (a ValueError) for an unknown
        timezone or an hour outside 0-23.
        """
        local_hour = user_local_hour(ctx.local_hour, ctx.timezone, self._now())
        norm = self._classifier.normalizer.normalize(message)
        verdict = self._classifier.classify_normalized(norm, ctx.history)
        mtype = verdict.message_type

        if mtype is MessageType.CRISIS:
            return self._upstream(Route.ASSISTANT, mtype, f"{verdict.reason}: stateful tier, "
                                  "never canned or cheap", crisis=True, strong=True)
        learned = self._escalation
        signals = self.rule_signals(norm, verdict)
        opinion = learned.heads.opinion(norm, signals) if learned is not None else None
        if learned is not None and opinion is not None and opinion.crisis >= learned.crisis_at:
            return self._upstream(Route.ASSISTANT, MessageType.CRISIS,
                                  f"learned crisis score {opinion.crisis:.2f} >= "
                                  f"{learned.crisis_at:g} (rules: {verdict.reason}): stateful "
                                  "tier, never canned or cheap", crisis=True, strong=True)
        if learned is not None and len(norm.tokens) >= learned.sentence_min_words:
            found = self._riskiest_sentence(message)
            if found is not None and found[0] >= learned.sentence_crisis_at:
                return self._upstream(Route.ASSISTANT, MessageType.CRISIS,
                                      f"learned crisis score {found[0]:.2f} >= "
                                      f"{learned.sentence_crisis_at:g} on one sentence of a long "
                                      f"message ({found[1][:60]!r}): stateful tier, never "
                                      "canned or cheap", crisis=True, strong=True)
        if self._policy is Policy.BASELINE:
            return self._upstream(Route.ASSISTANT, mtype,
                                  f"baseline policy: every message on the stateful tier "
                                  f"({verdict.reason})", strong=True)
        if ctx.message_count < self._onboarding:
            return self._stateful(mtype, signals.emotional, opinion,
                                  f"message {ctx.message_count + 1} of the first "
                                  f"{self._onboarding}: building the relationship "
                                  f"({verdict.reason})")
        if verdict.continues_thread:
            return self._stateful(mtype, signals.emotional, opinion, verdict.reason)

        reason = verdict.reason
        if verdict.canned_eligible:
            chosen, why_not = self._canned.choose(
                mtype, norm, local_hour, ctx.current_streak,
                require_match=not verdict.did_you_answer)
            if chosen is not None:
                seed = f"{ctx.display_name}\x1f{ctx.message_count}\x1f{message}"
                reply = chosen.pick_reply(seed, avoid=ctx.last_canned_reply)
                hour_note = f" at local hour {local_hour}" if chosen.hours is not None else ""
                return Decision(
                    route=Route.PATTERN, message_type=mtype, pattern=chosen.name,
                    canned_reply=reply, model="", max_output_tokens=0, temperature=0.0,
                    reason=f"{reason}: canned set {chosen.name}{hour_note}", crisis=False)
            reason = f"{reason}, not canned: {why_not}"

        if self._tiers.home_route(mtype) is Route.ASSISTANT:
            return self._stateful(mtype, signals.emotional, opinion,
                                  f"{reason}: {mtype.name} goes to the stateful tier")
        if learned is not None and opinion is not None and opinion.stateful >= learned.escalate_at:
            return self._stateful(opinion.stateful_type, signals.emotional, opinion,
                                  f"{reason}; learned stateful score {opinion.stateful:.2f} >= "
                                  f"{learned.escalate_at:g}: needs the coach's memory and "
                                  f"judgement, read as {opinion.stateful_type.name}")
        stateful_note = "" if opinion is None else \
            f" (learned stateful score {opinion.stateful:.2f} < {learned.escalate_at:g})" \
            if learned is not None else ""
        return self._upstream(Route.COMPLETIONS, mtype,
                              f"{reason}: {mtype.name} goes to the cheap tier{stateful_note}")

    def _riskiest_sentence(self, message: str) -> tuple[float, str] | None:
        """The crisis head's highest score on one sentence of ``message``, and the sentence.

        Risk said once inside a long, ordinary update ("did my run, also haven't eaten since
        tuesday, then a work rant") is diluted in the message's mean vector and among its
        many everyday words: before a writer of such messages (w21) joined the corpus, the
        head missed 48 of their 150 read whole and 23 read a sentence at a time at 0.9
        (docs/router.md). A sentence alone is the kind of message the head was trained on.
        Only ever adds CRISIS."""
        best: tuple[float, str] | None = None
        for part in sentences(message):
            norm = self.normalize(part)
            if len(norm.tokens) < SENTENCE_MIN_TOKENS:
                continue
            score = self._heads_opinion(norm, ()).crisis
            if best is None or score > best[0]:
                best = (score, part)
        return best

    def _stateful(self, mtype: MessageType, feelings: bool, opinion: Opinion | None,
                  reason: str) -> Decision:
        """A stateful turn on its type's model; anything emotional on the tier's own, and a
        goal that the type head reads as deep coaching (a decision with fear in it) typed so,
        since tools follow the type and a deep-coaching turn carries none."""
        learned = self._escalation
        if mtype is MessageType.GOAL_SETTING:
            if learned is not None and opinion is not None \
                    and opinion.stateful_type is MessageType.DEEP_COACHING \
                    and opinion.stateful_type_probability >= learned.feelings_at:
                feelings = True
                reason = (f"{reason}; a decision with feelings (learned type DEEP_COACHING "
                          f"{opinion.stateful_type_probability:.2f} >= {learned.feelings_at:g})")
            if feelings:
                mtype = MessageType.DEEP_COACHING
                reason = f"{reason}; a goal spoken with feelings is deep coaching, no tools"
        if feelings:
            return self._upstream(Route.ASSISTANT, mtype, f"{reason}; emotional language: "
                                  "the stateful tier's own model", strong=True)
        return self._upstream(Route.ASSISTANT, mtype, reason)

    def _upstream(self, route: Route, mtype: MessageType, reason: str,
                  *, crisis: bool = False, strong: bool = False) -> Decision:
        s: CallSettings = (self._tiers.strong_settings(route, mtype) if strong
                           else self._tiers.settings(route, mtype))
        return Decision(route=route, message_type=mtype, pattern="", canned_reply="",
                        model=s.model, max_output_tokens=s.max_output_tokens,
                        temperature=s.temperature, reason=reason, crisis=crisis)
