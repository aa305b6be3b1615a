"""When should a stateful conversation rotate? A replay through the offline model's token model.

Replays the bench workload's users (bench/workload.py: the same messages and times)
as one long-lived stateful conversation each, through the offline server's own token
counter, prompt cache (on a simulated clock) and reply model (OfflineModel, in
process, no HTTP), under rotation policies:

* ``every 4``: rotate as soon as the window (last 20 messages + summary) would hold
  more than 24 messages (the rule before issue 18: a rotation every second exchange);
* ``cold or C``: rotate a full window only on the first message after the cache
  retention (the prefix is cold anyway), or once the conversation would hold more
  than C messages (the hard ceiling).

Each turn's prompt is the persona (instructions), the running summary, the seed and
what was appended since, and the new message; rotations call the summary model on
what falls out of the window. Every message is a stateful turn here (the router sends
only a share of them to this tier, and back-fills the rest): the figures compare
rotation policies with each other, not whole-suite costs. Costs are priced with
services/common/pricing.py (answers on ``--model``, summaries on gpt-5.4-mini).

    .venv/bin/python -m bench.cache_breakeven            # markdown table on stdout
    .venv/bin/python -m bench.cache_breakeven --users 20 --model gpt-5.6-sol
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from bench.workload import User, build_workload
from services.common.pricing import PriceBook
from services.llm.config import DATA_DIR
from services.llm.persona import load_persona
from services.offline_openai.caching import RETENTION_24H, RETENTION_IN_MEMORY, PromptCache
from services.offline_openai.clock import SimClock
from services.offline_openai.generation import ModelCall, OfflineModel
from services.offline_openai.stats import Stats
from services.offline_openai.tokens import Segment, TokenCounter

KEEP = 20
PRUNE_AT = 24
SUMMARY_MODEL = "gpt-5.4-mini"
IN_MEMORY_TTL_S = 600.0
RETENTION_TTL_S = {RETENTION_IN_MEMORY: IN_MEMORY_TTL_S, RETENTION_24H: 24 * 3600.0}


@dataclass(frozen=True)
class Policy:
    name: str
    cold_after_s: float | None  # None: rotate as soon as the window is full
    ceiling: int | None = None


@dataclass
class Totals:
    messages: int = 0
    nanos: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    rotations: int = 0

    def per_1000_usd(self) -> float:
        return self.nanos / 1e9 / self.messages * 1000 if self.messages else 0.0


def replay_user(user: User, policy: Policy, retention: str, model: str, book: PriceBook,
                persona_coach: str, persona_summary: str, totals: Totals) -> None:
    clock = SimClock()
    cache = PromptCache(ttl_seconds=IN_MEMORY_TTL_S, clock=clock)
    offline = OfflineModel(TokenCounter(), cache, Stats())
    summary = ""
    window: list[Segment] = []  # what the provider conversation holds (seed + appended)
    folded: list[Segment] = []  # messages waiting to be folded into the summary
    last_used: float | None = None
    key = f"user-{user.user_id}"
    for message in user.messages:
        now = float(message.at_s)
        clock.set(now)
        idle = None if last_used is None else now - last_used
        would_hold = len(window) + 2
        cold = policy.cold_after_s is None or idle is None or idle > policy.cold_after_s
        rotate = would_hold > PRUNE_AT and cold
        if policy.ceiling is not None and would_hold > policy.ceiling:
            rotate = True
        if rotate:
            totals.rotations += 1
            folded = window[: len(window) - KEEP]
            window = window[len(window) - KEEP:]
            result = offline.generate(ModelCall(
                model=SUMMARY_MODEL, instructions=persona_summary,
                context=[Segment("system", f"Summary so far:\n{summary}"), *folded,
                         Segment("user", "Summarize.")],
                cache_key="summary", max_output_tokens=300))
            summary = getattr(result.reply, "text", summary)
            totals.nanos += book.cost_usd_nanos(
                SUMMARY_MODEL, result.input_tokens, result.cached_tokens, result.output_tokens,
                cache_write_tokens=result.cache_write_tokens).nanos
        context = ([Segment("developer", f"Recap:\n{summary}")] if summary else []) + window
        context.append(Segment("user", message.text))
        result = offline.generate(ModelCall(
            model=model, instructions=persona_coach, context=context, cache_key=key,
            cache_retention=retention, verbosity="low", max_output_tokens=600))
        reply = getattr(result.reply, "text", "")
        window += [Segment("user", message.text), Segment("assistant", reply)]
        totals.messages += 1
        totals.input_tokens += result.input_tokens
        totals.cached_tokens += result.cached_tokens
        totals.nanos += book.cost_usd_nanos(
            model, result.input_tokens, result.cached_tokens, result.output_tokens,
            cache_write_tokens=result.cache_write_tokens).nanos
        last_used = now


def resample(users: Sequence[User], per_month: int, days: int) -> list[User]:
    """The users' messages at about ``per_month`` messages a month: the workload's sessions
    kept in order, their days stretched or squeezed (times within a day unchanged)."""
    out = []
    for user in users:
        have = len(user.messages) / days * 30
        factor = have / per_month  # > 1: spread the days out (fewer messages a month)
        moved = []
        for m in user.messages:
            day, within = divmod(m.at_s, 86_400)
            moved.append(type(m)(**{**m.__dict__, "at_s": int(day * factor) * 86_400 + within}))
        moved.sort(key=lambda m: m.at_s)
        out.append(User(user.user_id, user.display_name, tuple(moved)))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--model", default="gpt-5.5")
    args = parser.parse_args(argv)
    book = PriceBook.load()
    persona = load_persona(DATA_DIR / "persona.yaml")
    users = build_workload(args.users, args.days, args.seed, prefix="breakeven")
    policies = [Policy("every 4 (old)", None)] + [
        Policy(f"cold or {c}", 0.0, c) for c in (40, 60, 100, 200, 400)]
    print(f"users {args.users}, {args.days} days of the bench workload, answers on {args.model}\n")
    print("| messages / user / month | retention | policy | $ per 1,000 messages | "
          "cached share of input | rotations per 100 messages |")
    print("|---:|---|---|---:|---:|---:|")
    for per_month in (30, 100, 300):
        sample = resample(users, per_month, args.days)
        for retention in (RETENTION_IN_MEMORY, RETENTION_24H):
            for policy in policies:
                if policy.cold_after_s is not None:
                    policy = Policy(policy.name, RETENTION_TTL_S[retention], policy.ceiling)
                totals = Totals()
                for user in sample:
                    replay_user(user, policy, retention, args.model, book, persona.coach,
                                persona.summary, totals)
                share = totals.cached_tokens / totals.input_tokens if totals.input_tokens else 0
                print(f"| {per_month} | {retention} | {policy.name} | "
                      f"{totals.per_1000_usd():.3f} | {share:.1%} | "
                      f"{100 * totals.rotations / totals.messages:.1f} |")


if __name__ == "__main__":
    main()
