"""How often a user's stateful turns come close enough together for a prompt cache to help.

Usage: ``python -m bench.stateful_gaps [--users 80 --days 21 --seed 20261127]``

Replays the bench workload (same generator and message times as ``make bench``) through the
router's own decision, in process (no upstream, no coach turns, so replies to the coach's
questions are read alone), and prints the share of stateful turns whose previous stateful
turn of the same user was within each window, on the same model (prompt caches are per
model) and on any model. With 24h retention that share bounds what caching can save on the
stateful tier: a turn whose user last touched the tier more than a day ago is read uncached
however the conversation is laid out (docs/cost.md).
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Sequence

from bench.workload import build_workload
from services.router.decision import MessageContext, Route, Router

WINDOWS_H = (1.0, 6.0, 24.0, 48.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=80)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--seed", type=int, default=20261127)
    args = parser.parse_args(argv)
    router = Router.from_files()
    same: list[float | None] = []
    any_model: list[float | None] = []
    models: collections.Counter[str] = collections.Counter()
    messages = 0
    for user in build_workload(args.users, args.days, args.seed):
        last: dict[str, int] = {}
        last_any: int | None = None
        for count, m in enumerate(user.messages):
            messages += 1
            decision = router.decide(m.text, MessageContext(
                message_count=count, local_hour=m.local_hour, current_streak=m.streak,
                display_name=m.display_name))
            if decision.route is not Route.ASSISTANT:
                continue
            models[decision.model] += 1
            same.append(None if decision.model not in last
                        else (m.at_s - last[decision.model]) / 3600)
            any_model.append(None if last_any is None else (m.at_s - last_any) / 3600)
            last[decision.model] = last_any = m.at_s

    def share(gaps: list[float | None], hours: float) -> float:
        return sum(1 for g in gaps if g is not None and g <= hours) / max(1, len(gaps))

    turns = len(same)
    print(f"{turns} stateful turns of {messages} messages ({turns / max(1, messages):.0%}); "
          f"models: " + ", ".join(f"{k} {v}" for k, v in models.most_common()))
    print("| previous stateful turn of the user within | same model | any model |")
    print("|---|---:|---:|")
    for hours in WINDOWS_H:
        print(f"| {hours:g} h | {share(same, hours):.0%} | {share(any_model, hours):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
