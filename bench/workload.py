"""A realistic workload from bench/workload/messages.yaml: users, their days, their messages.

Each user has a time zone (so local hours differ), a streak that grows on days the
habit gets done and resets on days it does not, and 2-5 messages a day: a greeting
in the morning, check-ins, questions or struggles during the day, a completion in
the evening, now and then goal setting, accountability, pattern questions or deep
coaching, acknowledgements after the coach answers, and (rarely) a crisis message.
Everything is drawn from one seeded ``random.Random``: the same seed gives the same
workload, so two policies replay exactly the same messages.

Every message has a time (``at_s``, seconds from the start of day 0, the user's local
time): minutes within its hour come from a second seeded generator (so the texts are the
same as without times), an acknowledgement follows the message it answers by 1-3 minutes
(one session), and a user's messages are in time order. The replay uses these times as
the offline server's simulated clock, so the prompt cache expires as it would in real life.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

MESSAGES_FILE = Path(__file__).parent / "workload" / "messages.yaml"
NAMES = ("Sam", "Alex", "Jordan", "Priya", "Mateo", "Aisha", "Chen", "Lena", "Omar", "Zoe",
         "Kai", "Nina", "Theo", "Maya", "Jonas", "Ines", "Ravi", "Ella", "Tom", "Yuki")
COMPLEX_KINDS = ("goal_setting", "accountability", "pattern", "deep_coaching")


@dataclass(frozen=True)
class Message:
    user_id: str
    kind: str
    expect: str
    text: str
    local_hour: int
    streak: int
    display_name: str
    day: int
    at_s: int = 0  # seconds from the start of day 0 (the user's local time)


@dataclass(frozen=True)
class User:
    user_id: str
    display_name: str
    messages: tuple[Message, ...]


class Templates:
    def __init__(self, path: Path = MESSAGES_FILE) -> None:
        raw: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        self.slots: dict[str, list[str]] = {k: [str(v) for v in vs] for k, vs in raw["slots"].items()}
        self.kinds: dict[str, tuple[str, list[str]]] = {
            name: (str(spec["expect"]), [str(t) for t in spec["texts"]])
            for name, spec in raw["kinds"].items()
        }
        for name, (_, texts) in self.kinds.items():
            for text in texts:
                for slot in re.findall(r"{(\w+)}", text):
                    if slot not in self.slots and slot != "streak":
                        raise ValueError(f"{path}: kind {name}: unknown slot {{{slot}}} in {text!r}")

    def render(self, kind: str, rng: random.Random, streak: int) -> tuple[str, str]:
        expect, texts = self.kinds[kind]
        text = rng.choice(texts)
        for slot in re.findall(r"{(\w+)}", text):
            value = str(max(streak, 1)) if slot == "streak" else rng.choice(self.slots[slot])
            text = text.replace("{" + slot + "}", value, 1)
        return expect, text


def _greeting(hour: int) -> str:
    if 5 <= hour <= 11:
        return "greeting_morning"
    if 12 <= hour <= 16:
        return "greeting_afternoon"
    return "greeting_evening"


def build_user(index: int, days: int, rng: random.Random, templates: Templates,
               prefix: str, crisis_user: bool, clock_rng: random.Random | None = None) -> User:
    user_id = f"{prefix}-u{index:04d}"
    name = rng.choice(NAMES)
    streak = rng.randint(0, 20)
    wake = rng.randint(5, 9)        # local hour of the first message
    night_owl = rng.random() < 0.25
    chatty = rng.random()           # how many messages a day this user tends to send
    crisis_day = rng.randrange(days) if crisis_user else -1
    out: list[Message] = []
    clock = clock_rng if clock_rng is not None else random.Random(f"{prefix}/{index}/clock")

    def add(kind: str, hour: int, day: int) -> None:
        expect, text = templates.render(kind, rng, streak)
        if kind == "acknowledgement" and out:  # answers the coach: same session, minutes later
            at = out[-1].at_s + 60 * clock.randint(1, 3)
        else:
            at = day * 86_400 + hour * 3_600 + 60 * clock.randint(0, 50) + clock.randint(0, 59)
        out.append(Message(user_id, kind, expect, text, (at // 3_600) % 24, streak, name, day, at))

    for day in range(days):
        did_it = rng.random() < 0.72
        # Morning: a greeting, sometimes followed by a check-in.
        hour = wake + rng.randint(0, 2)
        if rng.random() < 0.6:
            add(_greeting(hour), hour, day)
        if rng.random() < 0.35 + 0.3 * chatty:
            add(rng.choice(("check_in", "check_in", "question")), hour + 1, day)
        # Weekly-ish deeper conversations (day 0: setting the goal).
        if day == 0 or rng.random() < 0.15:
            add("goal_setting" if day == 0 else rng.choice(COMPLEX_KINDS), 13, day)
            if rng.random() < 0.5:
                add("acknowledgement", 13, day)
        # Midday: a question or a struggle.
        if rng.random() < 0.25 + 0.4 * chatty:
            add(rng.choice(("question", "struggle", "check_in", "greeting_afternoon")),
                rng.randint(12, 16), day)
        if day == crisis_day:
            add("crisis", 23 if night_owl else 21, day)
        # Evening: done, or not (and sometimes the coach hears about it).
        evening = rng.randint(18, 22) + (2 if night_owl else 0)
        if did_it:
            streak += 1
            add("completion" if rng.random() < 0.6 else "check_in", evening, day)
            if rng.random() < 0.2:
                add("acknowledgement", evening, day)
        else:
            streak = 0
            add(rng.choice(("struggle", "struggle", "accountability", "greeting_evening")), evening, day)
    out.sort(key=lambda m: m.at_s)  # stable: a session keeps its order
    return User(user_id, name, tuple(out))


def build_workload(users: int, days: int, seed: int, prefix: str = "bench",
                   crisis_share: float = 0.02) -> list[User]:
    """``users`` users over ``days`` days; about ``crisis_share`` of users send one crisis message."""
    rng = random.Random(seed)
    templates = Templates()
    crisis_users = max(1, round(users * crisis_share)) if crisis_share > 0 else 0
    chosen = set(rng.sample(range(users), min(crisis_users, users)))
    return [build_user(i, days, rng, templates, prefix, i in chosen,
                       random.Random(f"{seed}/{prefix}/{i}/clock")) for i in range(users)]


def long_conversation(user_id: str, turns: int, seed: int, kind: str = "deep_coaching") -> User:
    """One long-lived user sending ``turns`` messages of the same kind (all on the stateful
    tier), to see how the stateful input tokens per turn grow with the conversation: four
    turns each evening at 20:00, two minutes apart (one session a day)."""
    rng = random.Random(seed)
    templates = Templates()
    msgs = []
    for turn in range(turns):
        expect, text = templates.render(kind, rng, 5)
        day = turn // 4
        msgs.append(Message(user_id, kind, expect, text, 20, 5, "Sam", day,
                            day * 86_400 + 20 * 3_600 + 120 * (turn % 4)))
    return User(user_id, "Sam", tuple(msgs))


def messages_per_month(users: Sequence[User]) -> float:
    """Messages a user sends in 30 days, on average over ``users``."""
    span_days = max((m.at_s for u in users for m in u.messages), default=0) / 86_400 + 1
    return sum(len(u.messages) for u in users) / max(1, len(users)) * 30 / span_days


def paced(users: Sequence[User], per_month: float) -> list[User]:
    """The same users and messages, in the same order, at ``per_month`` messages a month:
    every session moves in time by one factor (the gaps between sessions grow or shrink) and
    keeps its own minutes (an acknowledgement stays 1-3 minutes after what it answers), so
    a conversation's length per month changes and nothing else."""
    factor = messages_per_month(users) / per_month
    out = _paced(users, factor)
    for _ in range(3):  # sessions keep their minutes, so one factor lands near, not on, it
        factor *= messages_per_month(out) / per_month
        out = _paced(users, factor)
    return out


SESSION_GAP_S = 600  # a message this soon after the previous one is in the same session


def _paced(users: Sequence[User], factor: float) -> list[User]:
    out = []
    for user in users:
        msgs: list[Message] = []
        for prev, m in zip((None, *user.messages), user.messages, strict=False):
            gap = m.at_s - prev.at_s if prev is not None else None
            if gap is None:
                at = int(m.at_s * factor)
            elif gap <= SESSION_GAP_S:
                at = msgs[-1].at_s + max(gap, 1)
            else:
                at = max(int(m.at_s * factor), msgs[-1].at_s + 1)
            msgs.append(replace(m, at_s=at, day=at // 86_400))
        out.append(User(user.user_id, user.display_name, tuple(msgs)))
    return out


def mix(users: list[User]) -> dict[str, int]:
    return dict(Counter(m.expect for u in users for m in u.messages))
