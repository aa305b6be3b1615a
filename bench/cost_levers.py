"""`make bench-levers`: the cost ratio per cache regime, conversation length and lever.

Issue 18, point 7. Each row is one side-by-side replay of `make bench`'s cost phase
(bench/run.py: both policies, whole suites, lockstep windows of simulated time, costs from
`ChatResponse.cost_usd_nanos`), on a smaller workload (20 users x 14 days by default, paced
to the row's messages per user per month) and with the settings the row names:

* cache regime, for both policies: ``none`` (the upstream caches nothing:
  ``OFFLINE_OPENAI_PROMPT_CACHE=off``), ``in_memory`` (every tier asks for the default
  5-10 minute retention: a caching file with no ``24h``) or ``24h`` (the shipped
  ``services/llm/data/caching.yaml``: the stateful tier, the baseline's included, asks for
  24 hours under a key per user);
* messages per user per month: 30, 100, 300 (``bench.workload.paced``: the same messages,
  sessions moved apart or together);
* the optimized policy's levers, each switched against the default at 24h and 100 a month:
  cache-aware conversations (point 1: rotate when cold or at 200 messages, and one
  tools-and-instructions prefix), upkeep after the reply on flex (point 3), verbosity per
  message type (point 4). Point 2 (billing cached, written and flex tokens as reported) is
  how every row is priced, not a lever.

The threads service runs on real time while the offline server runs the simulated clock,
so the "cold" half of the cache-aware rotation never fires here (a conversation rotates at
its ceiling only); `bench/cache_breakeven.py` measures that rule on simulated time.

Usage: ``python -m bench.cost_levers [--users 20 --days 14 --out bench/results]``; about a
minute and a half per row on 2 cores. Writes ``cost_levers.md`` and ``cost_levers.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.harness import BenchSuite
from bench.report import per_1k
from bench.run import FULL, RESULTS, Size, cost_phases
from bench.workload import build_workload, messages_per_month, paced
from services.common.settings import REPO_ROOT

LLM_DATA = REPO_ROOT / "services" / "llm" / "data"
REGIMES = ("none", "in_memory", "24h")
LENGTHS = (30, 100, 300)


@dataclass(frozen=True)
class Row:
    regime: str
    per_month: int
    lever: str = "all on (default)"
    env: dict[str, str] = field(default_factory=dict)  # the optimized suite's only


def data_variants(folder: Path) -> dict[str, Path]:
    """The llm data files the rows switch to, written once into ``folder``."""
    caching = (LLM_DATA / "caching.yaml").read_text(encoding="utf-8")
    in_memory = folder / "caching-in-memory.yaml"
    in_memory.write_text(caching.replace("stateful: 24h", "stateful: in_memory"), encoding="utf-8")
    stable = folder / "caching-stable-tools.yaml"
    stable.write_text(caching.replace("stable_tools: false", "stable_tools: true"),
                      encoding="utf-8")
    verbosity = folder / "verbosity-off.yaml"
    verbosity.write_text("version: 1\ndefault: medium\nmodels: []\nper_type: {}\n",
                         encoding="utf-8")
    return {"in_memory": in_memory, "stable_tools": stable, "verbosity_off": verbosity}


def rows(files: dict[str, Path]) -> list[Row]:
    out = [Row(regime, n) for regime in REGIMES for n in LENGTHS]
    out += [
        Row("24h", 100, "cache-aware conversations on (cold or 200, one prefix)",
            {"COACH_PRUNE_CACHE_COLD_SECONDS": "86400",
             "COACH_LLM_CACHING_FILE": str(files["stable_tools"])}),
        Row("24h", 100, "upkeep after the reply on flex off",
            {"COACH_FOLD_AFTER_REPLY": "false"}),
        Row("24h", 100, "verbosity per type off (every reply at the API's default)",
            {"COACH_LLM_VERBOSITY_FILE": str(files["verbosity_off"])}),
    ]
    return out


def regime_env(regime: str, files: dict[str, Path]) -> dict[str, str]:
    if regime == "none":
        return {"OFFLINE_OPENAI_PROMPT_CACHE": "off"}
    if regime == "in_memory":
        return {"COACH_LLM_CACHING_FILE": str(files["in_memory"])}
    return {}


async def measure(row: Row, size: Size, seed: int, files: dict[str, Path],
                  log: logging.Logger) -> dict[str, Any]:
    users = paced(build_workload(size.users, size.days, seed), row.per_month)
    common = regime_env(row.regime, files)
    baseline = BenchSuite("levers-baseline", policy="baseline", extra_env=common)
    optimized = BenchSuite("levers-optimized", policy="optimized",
                           extra_env={**common, **row.env})
    pair = [baseline, optimized]
    log.info(f"[{row.regime}, {row.per_month}/month, {row.lever}]")
    try:
        await asyncio.gather(*(s.start() for s in pair))
        result = await cost_phases(pair, size, seed, log, users=users)
    finally:
        await asyncio.gather(*(s.stop() for s in pair), return_exceptions=True)
    base, opt = result[baseline.name], result[optimized.name]
    ratio = opt["summary"]["cost_nanos"] / max(1, base["summary"]["cost_nanos"])
    cut = opt["summary"]["truncated"], opt["summary"]["upstream_answers"]
    return {"regime": row.regime, "per_month": row.per_month,
            "measured_per_month": round(messages_per_month(users), 1), "lever": row.lever,
            "ratio": ratio,
            "baseline_per_1k_usd": per_1k(base["summary"]["cost_nanos"],
                                          base["summary"]["answered"]),
            "optimized_per_1k_usd": per_1k(opt["summary"]["cost_nanos"],
                                           opt["summary"]["answered"]),
            "cached_share_baseline": base["cache_hit_share_chat"],
            "cached_share_optimized": opt["cache_hit_share_chat"],
            "cut_replies": cut[0], "upstream_answers": cut[1],
            "errors": base["all_errors"] + opt["all_errors"]}


def markdown(results: list[dict[str, Any]], size: Size, elapsed_s: float) -> str:
    out = [(f"`python -m bench.cost_levers` ({size.users} users x {size.days} days, paced to "
           "each row's messages per user per month; both policies side by side per row):"), "",
           ("| cache regime | messages / user / month | optimized policy | baseline $/1k msgs "
           "| optimized $/1k msgs | optimized / baseline | cached share of input, baseline / "
           "optimized | cut replies | errors |"),
           "|---|---:|---|---:|---:|---:|---|---:|---:|"]
    for r in results:
        out.append(f"| {r['regime']} | {r['per_month']} ({r['measured_per_month']:g}) | "
                   f"{r['lever']} | {r['baseline_per_1k_usd']:.3f} | "
                   f"{r['optimized_per_1k_usd']:.3f} | **{r['ratio']:.1%}** | "
                   f"{r['cached_share_baseline']:.0%} / {r['cached_share_optimized']:.0%} | "
                   f"{r['cut_replies']} of {r['upstream_answers']} | {r['errors']} |")
    out += ["", f"Whole run: {elapsed_s / 60:.1f} min."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--only", help="run only the rows whose regime or lever contains this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logging.getLogger("coach.suite").setLevel(logging.WARNING)
    log = logging.getLogger("bench.levers")
    size = replace(FULL, users=args.users, days=args.days, long_turns=20, checkpoints=(10, 20))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="coach-levers-") as folder:
        files = data_variants(Path(folder))
        chosen = [r for r in rows(files)
                  if not args.only or args.only in r.regime or args.only in r.lever]

        async def all_rows() -> list[dict[str, Any]]:
            return [await measure(r, size, args.seed, files, log) for r in chosen]

        results = asyncio.run(all_rows())
    text = markdown(results, size, time.perf_counter() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost_levers.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "cost_levers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
