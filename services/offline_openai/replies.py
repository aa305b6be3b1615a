"""What the offline model says: short, direct accountability-coach replies.

Deterministic: the reply is picked by a hash of the latest user text and the length
of the context, so tests are reproducible while different messages get different
replies. Words are matched on word boundaries, never as raw substrings.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

GOAL_TOOL_NAME = "save_goal"

GOAL_PATTERN = re.compile(r"\b(goal|want to|going to|plan to|aim to|commit to)\b", re.IGNORECASE)
SUMMARY_PATTERN = re.compile(r"\bsummar", re.IGNORECASE)
STRUGGLE_PATTERN = re.compile(
    r"\b(missed|skipped|failed|didn'?t|couldn'?t|can'?t|stuck|tired|hard|behind|gave up|lazy"
    r"|slipped|struggl\w*|overwhelmed)\b",
    re.IGNORECASE,
)
WIN_PATTERN = re.compile(
    r"\b(did it|done|finished|completed|crushed|nailed|streak|hit my|made it|success\w*)\b",
    re.IGNORECASE,
)
# Instructions asking for the reply in the same response as a function call (GPT-5's
# tool preambles: a message item before the function_call item of one response).
SAME_RESPONSE_PATTERN = re.compile(r"\bsame response\b", re.IGNORECASE)
GREETING_PATTERN = re.compile(
    r"^\s*(hi|hey|hello|good (morning|afternoon|evening)|yo)\b", re.IGNORECASE
)

STRUGGLE_REPLIES = (
    "Talk to me. What got in the way?",
    "Okay, a miss is data, not a verdict. What happened right before you skipped it?",
    "Fine. One off day doesn't break you. What's the smallest version you can do today?",
    "No excuses, no guilt. What would have made it easier to show up?",
    "I hear you. What's one thing you can change so tomorrow goes differently?",
)
WIN_REPLIES = (
    "That's how it's done. What's the plan for tomorrow?",
    "Good. You said you would and you did. Same time tomorrow?",
    "Nice work. Keep the chain going: what's next on your list?",
    "Proud of you. Now don't get comfortable. What's the next rep?",
    "Logged. That's real progress. What made today work?",
)
QUESTION_REPLIES = (
    "Short answer: start smaller than you think. What's the first five-minute step?",
    "Good question. What have you already tried, and what happened?",
    "It depends on what you'll actually do. What fits your day best?",
    "Keep it simple: one habit, same time, every day. Which one matters most?",
)
GREETING_REPLIES = (
    "Hey. What are you getting done today?",
    "Good to see you. What's the one thing that matters today?",
    "Morning check-in: what's your commitment for today?",
)
GENERAL_REPLIES = (
    "What's the plan for tomorrow?",
    "Got it. What's the next concrete step, and when will you do it?",
    "Okay. On a scale of 1-10, how committed are you to this today?",
    "Noted. What would make today a win?",
    "Understood. Who or what will hold you to it?",
    "Let's keep it moving. What are you doing in the next hour?",
)
AFTER_GOAL_SAVED_REPLIES = (
    "Locked in: {goal}. What's the first step, and when will you take it?",
    "Saved: {goal}. I'll check in on it. What could get in your way?",
    "Goal recorded: {goal}. What does day one look like?",
)


# What a real model adds around its core reply, more of it the higher the verbosity
# (OpenAI's `text.verbosity`, default "medium"). The natural length depends on the
# message and the verbosity only, never on max_output_tokens, which only cuts it.
ELABORATIONS = (
    "Progress like this is built from small, repeatable actions rather than big pushes.",
    ("It helps to decide in advance exactly when and where you'll do it, so the choice is "
     "already made when the moment comes."),
    "Over weeks, consistency matters more than any single day.",
    "It often helps to look at the hour, the place and the people around you.",
    "A note somewhere you'll see it in the morning does a lot of the remembering for you.",
    ("Consistency beats intensity here; a short session you actually do is worth more than "
     "a long one you keep postponing."),
    "When something gets in the way, treat it as information about the plan, not about you.",
    "Tell me how it went afterwards, even if it only went halfway.",
    "Pair it with something you already do every day so it rides on an existing habit.",
    "Keep an eye on energy as well as time; the same task is easier at the right hour.",
    "Celebrate the small wins out loud; it makes the next one more likely.",
    "If you miss once, the rule is simple: never miss twice in a row.",
)
VERBOSITIES = ("low", "medium", "high")
DEFAULT_VERBOSITY = "medium"
_EXTRA_SENTENCES = {"low": (0, 0), "medium": (2, 4), "high": (6, 9)}


def natural_text(core: str, verbosity: str | None, key: str) -> str:
    """The reply at its natural length for ``verbosity``: a deterministic number of
    elaborations picked by ``key`` (low adds none), then the core reply, so the reply
    still ends on the coach's question as a real coach's does."""
    verbosity = verbosity or DEFAULT_VERBOSITY
    low, high = _EXTRA_SENTENCES[verbosity]
    if not high:
        return core
    digest = hashlib.sha256(f"{verbosity}\x1f{key}".encode()).digest()
    count = low + digest[0] % (high - low + 1)
    start = digest[1] % len(ELABORATIONS)
    extra = [ELABORATIONS[(start + 5 * i) % len(ELABORATIONS)] for i in range(count)]
    return " ".join([*extra, core])


@dataclass(frozen=True, slots=True)
class TextReply:
    text: str


@dataclass(frozen=True, slots=True)
class GoalCall:
    """A call to the `save_goal` function, with the reply written before it when the
    instructions ask for the reply in the same response (``preamble``)."""

    goal: str
    deadline: str = ""
    preamble: str = ""

    @property
    def name(self) -> str:
        return GOAL_TOOL_NAME

    @property
    def arguments(self) -> str:
        return json.dumps({"goal": self.goal, "deadline": self.deadline})


Reply = TextReply | GoalCall


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    """What the reply is decided from."""

    latest_user_text: str
    user_texts: Sequence[str]  # every user message in the context, oldest first
    instructions: str = ""
    tool_names: frozenset[str] = frozenset()
    answering_tool_output: bool = False  # the newest item is a function's output
    saved_goal: str = ""  # the goal argument of the call being answered, if known
    context_size: int = 0
    # The Responses API lets a response carry a message and a function call (an
    # Assistants run in this server answers after the outputs instead; the Chat
    # Completions path passes no instructions: the cheap tier never carries tools).
    preamble_allowed: bool = True
    verbosity: str | None = None  # low / medium / high; None: the API's default (medium)


def _pick(options: Sequence[str], key: str) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def goal_text(user_text: str) -> str:
    """A short goal statement taken from the words after the goal phrase."""
    match = GOAL_PATTERN.search(user_text)
    tail = user_text[match.end():] if match else user_text
    tail = re.sub(r"^\s*(is|was|:)?\s*(to\s+)?", "", tail, flags=re.IGNORECASE)
    words = re.split(r"\s+", tail.strip())
    goal = " ".join(words[:12]).strip(" .!?,;:")
    return goal or user_text.strip()[:80]


def summary_text(user_texts: Sequence[str]) -> str:
    """A plausible summary: the first words of each user line."""
    points = []
    for text in user_texts:
        words = text.split()
        if not words or SUMMARY_PATTERN.search(text):
            continue
        points.append(" ".join(words[:8]).rstrip(".!?,;:"))
    if not points:
        return "Summary: no user messages yet."
    shown = points[-12:]
    return f"Summary ({len(points)} user messages): " + "; ".join(shown) + "."


def decide_reply(request: ReplyRequest) -> Reply:
    """The reply for one model call."""
    text = request.latest_user_text
    key = f"{request.context_size}\x1f{text}"
    if request.answering_tool_output:
        goal = request.saved_goal or "your goal"
        core = _pick(AFTER_GOAL_SAVED_REPLIES, key).format(goal=goal)
        return TextReply(natural_text(core, request.verbosity, key))
    if SUMMARY_PATTERN.search(request.instructions) or SUMMARY_PATTERN.search(text):
        return TextReply(summary_text(request.user_texts))
    if GOAL_TOOL_NAME in request.tool_names and GOAL_PATTERN.search(text):
        goal = goal_text(text)
        if request.preamble_allowed and SAME_RESPONSE_PATTERN.search(request.instructions):
            return GoalCall(goal, preamble=_pick(AFTER_GOAL_SAVED_REPLIES, key).format(goal=goal))
        return GoalCall(goal)
    if STRUGGLE_PATTERN.search(text):
        return TextReply(natural_text(_pick(STRUGGLE_REPLIES, key), request.verbosity, key))
    if WIN_PATTERN.search(text):
        return TextReply(natural_text(_pick(WIN_REPLIES, key), request.verbosity, key))
    if GREETING_PATTERN.search(text):
        return TextReply(natural_text(_pick(GREETING_REPLIES, key), request.verbosity, key))
    if text.rstrip().endswith("?"):
        return TextReply(natural_text(_pick(QUESTION_REPLIES, key), request.verbosity, key))
    return TextReply(natural_text(_pick(GENERAL_REPLIES, key), request.verbosity, key))
