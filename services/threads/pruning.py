"""Bounded upstream context: when to rotate a provider conversation, what to back-fill.

A provider conversation holds its seed (the
last N messages, after a running summary of everything older) plus what was
added since. Before each stateful turn:

* messages answered elsewhere (canned, cheap, fallback) that the conversation
  has not seen are appended, so the strong model sees the whole story;
* when more than N messages are unseen, or the conversation would then hold more
  than ``prune_at_messages`` AND its cached prefix is cold anyway (the first
  message after ``cache_cold_after_s`` of inactivity: the upstream would read the
  whole conversation at full price either way), or more than the hard
  ``ceiling_messages`` whatever the cache, it is rotated instead: the messages
  falling out of the window are folded into the summary (only those: the
  summary is incremental) and a new conversation is seeded with summary + last
  N messages.

Why not rotate as soon as the window is full: a rotation starts a new prefix, so
the next turn reads the whole seed at the full input price (and writes it to the
cache, at 1.25x on the models that bill writes) instead of at the cached price
(a tenth). While the cache is warm, keeping a few more messages costs a tenth of
their tokens per turn; a rotation costs 90% of the seed once (docs/cost.md has
the break-even). ``cache_cold_after_s`` of 0 restores the old rule (rotate as
soon as the window is full).

Rotating ahead (``rotate_ahead``, on with the background fold and the window rule): a
rotation on the reply's path waits for two upstream calls (a Summarize, a new
conversation) before the turn's own; with the window rule that was nearly every stateful
turn once a user's window had filled (a turn rotates whenever it finds a canned or cheap
exchange unseen). So after a reply, once the summary is folded up to the window, the next
conversation is seeded and swapped in in the background (``folding.py``), and the user's
next turn only carries what came since, however much that is. A turn then rotates itself
only when the rotation ahead fell behind (a busy flex tier, a lost race) or a crowd of
unseen messages came in: once it would run on two whole windows more than
``prune_at_messages``.

The baseline policy never prunes and never summarizes. Pure functions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.common.errors import ConfigError
from services.threads.records import Conversation, HistoryMessage

# Messages a stateful turn adds: the user's message and the coach's answer.
TURN_MESSAGES = 2
# Most turns the llm service takes in one call (seed, append, summarize).
MAX_TURNS_PER_CALL = 100


@dataclass(frozen=True)
class PruneSettings:
    keep_messages: int = 20
    prune_at_messages: int = 24
    # Most messages folded into the summary by one Summarize call.
    summary_batch: int = MAX_TURNS_PER_CALL
    # A full window rotates only once the conversation has been idle this long (its
    # cached prefix expired: the stateful tier's prompt_cache_retention); 0: always.
    cache_cold_after_s: float = 0.0
    # Rotate whatever the cache once the conversation would hold more (0: no ceiling).
    ceiling_messages: int = 0
    # A full window is rotated after the reply, off the next turn's path (folding.py); the
    # turn itself rotates only once two whole windows past prune_at_messages (a backstop).
    rotate_ahead: bool = False

    @property
    def turn_rotates_above(self) -> int:
        """Most messages a turn runs on before it rotates the conversation itself.

        Rotating ahead, the bound is two windows past ``prune_at_messages``. One window (44
        at the defaults) was met by the tail of users' runs of canned and cheap exchanges
        between stateful turns (a rotation ahead only follows a stateful reply): at 27%
        stateful, 12 other exchanges in a row come before 2-3% of stateful turns, and each
        of those waited for a Summarize and a new conversation on its path. In the open loop
        those turns were every Chat answer over 550 ms (64 of 64 in one run at 90/s) and
        failed the p99 of a step in three of six. Two windows need 20 in a row (0.2%); the
        turn that carries them reads 20 more messages once, which the rotation after its
        reply folds."""
        return self.prune_at_messages + (2 * self.keep_messages if self.rotate_ahead else 0)

    @property
    def unseen_read_limit(self) -> int:
        """How many of the newest unseen messages a turn reads: one more than it could
        carry, so that "more" is seen."""
        if self.rotate_ahead:
            return self.turn_rotates_above + 1
        return self.keep_messages + 1

    def __post_init__(self) -> None:
        if not 2 <= self.keep_messages <= MAX_TURNS_PER_CALL:
            raise ConfigError(
                f"COACH_PRUNE_KEEP_MESSAGES must be between 2 and {MAX_TURNS_PER_CALL}")
        if not 1 <= self.summary_batch <= MAX_TURNS_PER_CALL:
            raise ConfigError(
                f"COACH_SUMMARY_BATCH_MESSAGES must be between 1 and {MAX_TURNS_PER_CALL}")
        if self.prune_at_messages < self.keep_messages + TURN_MESSAGES:
            raise ConfigError(
                "COACH_PRUNE_AT_MESSAGES must be at least COACH_PRUNE_KEEP_MESSAGES + 2 "
                f"(got {self.prune_at_messages} < {self.keep_messages} + 2)"
            )
        if self.cache_cold_after_s < 0:
            raise ConfigError("COACH_PRUNE_CACHE_COLD_SECONDS must not be negative")
        if self.rotate_ahead and self.cache_cold_after_s:
            raise ConfigError("rotating ahead is for the window rule: it rotates whatever the "
                              "cache, so it cannot go with COACH_PRUNE_CACHE_COLD_SECONDS")
        if self.ceiling_messages and self.ceiling_messages < self.prune_at_messages:
            raise ConfigError(
                "COACH_PRUNE_CEILING_MESSAGES must be 0 (none) or at least COACH_PRUNE_AT_MESSAGES "
                f"(got {self.ceiling_messages} < {self.prune_at_messages})"
            )


@dataclass(frozen=True)
class ContinuityPlan:
    """What to do before the turn: rotate (with why), or append ``append``."""

    rotate: bool
    reason: str
    append: tuple[HistoryMessage, ...] = ()


def plan_continuity(
    conversation: Conversation | None,
    unseen: Sequence[HistoryMessage],
    *,
    api: str,
    settings: PruneSettings,
    baseline: bool,
    idle_s: float | None = None,
) -> ContinuityPlan:
    """Decides between back-filling and rotating.

    ``unseen`` is oldest first; in the optimized policy the caller passes at
    most ``settings.unseen_read_limit`` of the newest unseen messages (one more
    than a turn may carry tells "more"). ``idle_s`` is how long the conversation has
    been unused upstream (None: unknown, read as cold).
    """
    if conversation is None:
        return ContinuityPlan(rotate=True, reason="first_conversation")
    if baseline:
        return ContinuityPlan(rotate=False, reason="", append=tuple(unseen))
    if conversation.api != api:
        return ContinuityPlan(rotate=True, reason="api_changed")
    # Rotating ahead, a turn carries more than a window of unseen messages (many canned and
    # cheap answers since the last turn) rather than wait for a rotation; the rotation
    # after its reply folds them. Only the bound below makes it rotate itself.
    if len(unseen) > settings.keep_messages and not settings.rotate_ahead:
        return ContinuityPlan(rotate=True, reason="unseen_beyond_window")
    would_hold = conversation.held_messages + len(unseen) + TURN_MESSAGES
    if settings.ceiling_messages and would_hold > settings.ceiling_messages:
        return ContinuityPlan(rotate=True, reason="ceiling")
    if would_hold > settings.turn_rotates_above:
        if not settings.cache_cold_after_s:
            return ContinuityPlan(rotate=True, reason="window_full")
        if idle_s is None or idle_s > settings.cache_cold_after_s:
            return ContinuityPlan(rotate=True, reason="window_full_cache_cold")
    return ContinuityPlan(rotate=False, reason="", append=tuple(unseen))


@dataclass(frozen=True)
class RotationPlan:
    """Seed of the new conversation, and the range of messages to fold into the summary."""

    seed: tuple[HistoryMessage, ...]
    # Fold messages with summarize_after < id <= summarize_through.
    summarize_after: int
    summarize_through: int

    @property
    def needs_summary(self) -> bool:
        return self.summarize_through > self.summarize_after


def plan_rotation(
    recent: Sequence[HistoryMessage], *, summarized_through: int, baseline: bool = False
) -> RotationPlan:
    """``recent`` are the messages the new conversation keeps (oldest first).

    In the optimized policy they are the user's last N messages and everything
    older than them goes into the summary; in the baseline policy ``recent`` is
    the whole history and nothing is summarized.
    """
    seed = tuple(recent)
    if baseline or not seed:
        return RotationPlan(seed, summarized_through, summarized_through)
    boundary = seed[0].id - 1
    return RotationPlan(seed, summarized_through, max(boundary, summarized_through))


def summary_batches(
    messages: Sequence[HistoryMessage], batch: int
) -> list[tuple[HistoryMessage, ...]]:
    """Splits messages to fold into Summarize calls of at most ``batch`` messages."""
    return [tuple(messages[i : i + batch]) for i in range(0, len(messages), batch)]
