"""`make bench`: cost, quality and speed of the suite, side by side, in one run.

Phases (each suite is the real thing: services.suite starts PostgreSQL, the offline
OpenAI server and the four services as processes, on ports of its own):

1. quality: scripts/eval_router.py figures and bench/classify_bench.py (in-process);
2. cost: the same seeded workload (many users, weeks of messages each) and one long
   conversation replayed through Router.Chat under COACH_POLICY=baseline and optimized,
   side by side, in lockstep windows of simulated time (each suite's offline server clock
   set to the window's start, so cached prompts expire after 10 idle minutes as they do at
   OpenAI); costs from ChatResponse.cost_usd_nanos, cross-checked with the ledger's
   GetCostReport; upstream calls and cached tokens from the offline server's /_control/stats;
3. latency: on the optimized suite, Router.Chat (canned, cheap tier) next to a bare
   grpc.aio health server and the cheap tier's floor (its path through bare servers, no
   suite code: bench/bare_health.py), interleaved; then a cheap-tier message's time split
   by layer (bench/anatomy.py);
4. a long conversation on the other stateful backend (assistants);
5. scale: 500 concurrent users with a 300 ms upstream, and where the time goes (the
   services' coach_rpc_latency_seconds histograms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.anatomy import cheap_anatomy
from bench.harness import BareHealth, BenchSuite, Floor, RouterClient, histo_delta
from bench.latency import make_targets, single_call_latency, throughput
from bench.replay import (
    WindowedRun,
    cache_hit_share,
    replay,
    replay_in_windows,
    routes_by_kind,
    summarize,
    tokens_at_turns,
)
from bench.workload import User, build_workload, long_conversation, mix
from services.common.settings import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"
LONG_USER = "long-lived"
# Simulated time of day 0, 00:00 (a Monday) for the offline servers' clocks.
SIM_ORIGIN = datetime(2026, 11, 2, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Size:
    users: int
    days: int
    concurrency: int
    long_turns: int
    checkpoints: tuple[int, ...]
    lat_rounds: int
    lat_per_round: int
    tput_slice_s: float
    tput_rounds: int
    scale_users: int
    scale_days: int
    scale_latency_ms: int
    classify_rounds: int
    assistants_long: bool
    anatomy_calls: int = 300  # sequential cheap-tier calls whose time is split by layer
    window_s: int = 900  # lockstep window of simulated time in the cost replay


FULL = Size(users=80, days=21, concurrency=48, long_turns=210, checkpoints=(10, 30, 100, 200),
            lat_rounds=40, lat_per_round=10, tput_slice_s=2.0, tput_rounds=3,
            scale_users=500, scale_days=2, scale_latency_ms=300, classify_rounds=30,
            assistants_long=True)
QUICK = Size(users=10, days=3, concurrency=10, long_turns=34, checkpoints=(10, 30),
             lat_rounds=6, lat_per_round=5, tput_slice_s=0.5, tput_rounds=1,
             scale_users=40, scale_days=1, scale_latency_ms=300, classify_rounds=3,
             assistants_long=False, anatomy_calls=40)


def routes_by_type(samples: list[Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for s in samples:
        if not s.error:
            row = out.setdefault(s.route, {})
            row[s.message_type] = row.get(s.message_type, 0) + 1
    return out


def utc_day() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def quality(size: Size) -> dict[str, Any]:
    from scripts.eval_router import DEFAULT_FILE, evaluate, heldout_cases, missed_targets, score
    from services.router.decision import Router

    held = heldout_cases()
    figures = score(evaluate(Router.from_files(), held))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "classify_bench.py"),
                           "--rounds", str(size.classify_rounds)],
                          capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    classify = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"eval": figures, "eval_missed": missed_targets(figures),
            "eval_file": f"{DEFAULT_FILE.relative_to(REPO_ROOT)}, held out, {len(held)} messages",
            "classify": classify}


async def cost_phases(suites: list[BenchSuite], size: Size, seed: int,
                      log: logging.Logger, users: list[User] | None = None
                      ) -> dict[str, dict[str, Any]]:
    """Both policies replay the same workload (``users``, else the seeded one of ``size``)
    side by side, in lockstep simulated time."""
    users = users if users is not None else build_workload(size.users, size.days, seed)
    long_user = long_conversation(LONG_USER, size.long_turns, seed)
    clients = [RouterClient(suite.address("router")) for suite in suites]
    day0 = utc_day()
    await asyncio.gather(*(suite.offline_reset() for suite in suites))
    before = [await suite.rpc_histograms() for suite in suites]
    log.info(f"[{' + '.join(s.name for s in suites)}] replaying "
             f"{sum(len(u.messages) for u in users)} messages of {len(users)} users + a "
             f"{size.long_turns}-turn conversation in {size.window_s // 60}-minute windows of "
             "simulated time")
    runs = [WindowedRun(client, suite.name, suite.offline_set_clock)
            for client, suite in zip(clients, suites, strict=True)]
    per_run, windows = await replay_in_windows(
        runs, [*users, long_user], window_s=size.window_s, origin=SIM_ORIGIN,
        concurrency=size.concurrency, timeout=30)
    for client in clients:
        await client.close()
    out: dict[str, dict[str, Any]] = {}
    for suite, every, hist in zip(suites, per_run, before, strict=True):
        samples = [s for s in every if s.user_id != LONG_USER]
        long_samples = [s for s in every if s.user_id == LONG_USER]
        stats = await suite.offline_stats()
        after = await suite.rpc_histograms()
        answered = sum(1 for s in every if not s.error)
        ledger = await suite.wait_ledger(answered, day0, utc_day())
        summary = summarize(samples, windows.wall_s)
        out[suite.name] = {
            "workload": {"users": len(users), "days": size.days, "messages": len(samples),
                         "expect_mix": mix(users), "long_turns": size.long_turns},
            "summary": summary,
            "simulated_time": {"window_s": windows.window_s, "windows": windows.windows,
                               "deepest_user_window": windows.deepest,
                               "origin": SIM_ORIGIN, "cache_ttl_s": 600},
            "cache_hit_share": stats["cached_tokens"] / max(1, stats["input_tokens"]),
            "cache_hit_share_chat": cache_hit_share(samples),
            "all_messages": len(every),
            "all_cost_nanos": sum(s.cost_nanos for s in every if not s.error),
            "all_errors": sum(1 for s in every if s.error),
            "all_routes": summarize(every, windows.wall_s)["routes"],
            "routes_by_kind": routes_by_kind(samples),
            "types_by_route": routes_by_type(samples),
            "long": {"tokens": tokens_at_turns(long_samples, LONG_USER, size.checkpoints),
                     "summary": summarize(long_samples, 1.0)},
            "ledger": {"total_calls": ledger.total_calls,
                       "total_cost_nanos": ledger.total_cost_usd_nanos,
                       "rows": [{"route": r.route, "model": r.model, "calls": r.calls,
                                 "cost_nanos": r.cost_usd_nanos} for r in ledger.rows]},
            "upstream": stats,
            "rpc": {f"{k[0]}.{k[1]}": {"count": h.count, "mean_ms": h.mean_ms}
                    for k, h in histo_delta(after, hist).items() if h.count},
            "suite_start_s": suite.started_s,
        }
    return out


async def long_only(suite: BenchSuite, size: Size, seed: int) -> dict[str, Any]:
    client = RouterClient(suite.address("router"))
    samples, wall = await replay(client, [long_conversation(LONG_USER, size.long_turns, seed)],
                                 concurrency=1, timeout=30, tag=suite.name)
    await client.close()
    return {"tokens": tokens_at_turns(samples, LONG_USER, size.checkpoints),
            "summary": summarize(samples, wall)}


async def latency_phase(suite: BenchSuite, size: Size, seed: int) -> dict[str, Any]:
    bare = BareHealth()
    floor = Floor(f"http://{suite.offline_addr}/v1")
    try:
        await bare.start()
        await floor.start()
        targets = await make_targets(suite.address("router"), bare.address, 32, suite.name,
                                     floor.address)
        try:
            before = await suite.rpc_histograms()
            single = await single_call_latency(targets, size.lat_rounds, size.lat_per_round, seed)
            rpc = {f"{k[0]}.{k[1]}": {"count": h.count, "mean_ms": h.mean_ms}
                   for k, h in histo_delta(await suite.rpc_histograms(), before).items() if h.count}
            tput = await throughput(targets, ["health", "canned", "cheap"], workers=16,
                                    slice_s=size.tput_slice_s, rounds=size.tput_rounds)
        finally:
            await targets.close()
    finally:
        await floor.stop()
        await bare.stop()
    anatomy = await cheap_anatomy(suite, size.anatomy_calls)
    return {"single": single, "throughput": tput, "workers": 16, "rpc": rpc, "anatomy": anatomy}


async def scale_phase(suite: BenchSuite, size: Size, seed: int, log: logging.Logger) -> dict[str, Any]:
    users = build_workload(size.scale_users, size.scale_days, seed + 1, prefix="scale")
    client = RouterClient(suite.address("router"), channels=4)
    await suite.offline_reset()
    before = await suite.rpc_histograms()
    log.info(f"[{suite.name}] {len(users)} concurrent users, "
             f"{sum(len(u.messages) for u in users)} messages, upstream +{size.scale_latency_ms} ms")
    samples, wall = await replay(client, users, concurrency=len(users), timeout=30, tag=suite.name)
    await client.close()
    after = await suite.rpc_histograms()
    stats = await suite.offline_stats()
    rpc = {f"{k[0]}.{k[1]}": {"count": h.count, "mean_ms": h.mean_ms, "p50_ms": h.quantile_ms(0.5),
                              "p99_ms": h.quantile_ms(0.99)}
           for k, h in histo_delta(after, before).items() if h.count}
    return {"users": len(users), "summary": summarize(samples, wall), "rpc": rpc,
            "upstream": stats, "latency_ms": size.scale_latency_ms}


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    import os
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "date": utc_day()}


async def run(size: Size, quick: bool, seed: int, out_dir: Path, skip: set[str]) -> dict[str, Any]:
    log = logging.getLogger("bench")
    started = time.perf_counter()
    results: dict[str, Any] = {"mode": "quick" if quick else "full", "seed": seed,
                               "size": asdict(size), "machine": machine()}
    log.info("quality: router eval + classify micro-bench")
    results["quality"] = quality(size)

    suites = {policy: BenchSuite(policy, policy=policy) for policy in ("baseline", "optimized")}
    if size.assistants_long and "assistants" not in skip:
        suites["assistants"] = BenchSuite("assistants", policy="optimized", stateful_api="assistants")
    if "scale" not in skip:
        suites["scale"] = BenchSuite("scale", policy="optimized", latency_ms=size.scale_latency_ms)
    if quick:  # a smoke run: every suite starts at once (the figures are not for the README)
        log.info(f"starting {len(suites)} suites side by side")
        try:
            await asyncio.gather(*(s.start() for s in suites.values()))
        except BaseException:
            await asyncio.gather(*(s.stop() for s in suites.values()), return_exceptions=True)
            raise
    try:
        pair = [suites["baseline"], suites["optimized"]]
        if any(s.suite is None for s in pair):
            log.info("starting the baseline and optimized suites side by side")
            await asyncio.gather(*(s.start() for s in pair if s.suite is None))
        try:
            results["cost"] = await cost_phases(pair, size, seed, log)
        finally:
            await suites["baseline"].stop()
        for name, suite in suites.items():
            if name == "baseline":
                continue
            if suite.suite is None:
                log.info(f"starting the {name} suite (policy {suite.policy}, {suite.stateful_api}, "
                         f"upstream +{suite.latency_ms} ms)")
                await suite.start()
            try:
                if name == "optimized" and "latency" not in skip:
                    log.info("latency: Router.Chat vs a bare grpc.aio health check, interleaved")
                    results["latency"] = await latency_phase(suite, size, seed)
                if name == "assistants":
                    log.info("[assistants] the long conversation on the assistants backend")
                    results["assistants_long"] = await long_only(suite, size, seed)
                if name == "scale":
                    results["scale"] = await scale_phase(suite, size, seed, log)
            finally:
                await suite.stop()
    finally:
        await asyncio.gather(*(s.stop() for s in suites.values()), return_exceptions=True)

    results["elapsed_s"] = time.perf_counter() - started
    results["targets"] = report.targets(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    markdown = report.markdown(results)
    (out_dir / "latest.md").write_text(markdown)
    print(markdown)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cost, quality and speed, side by side.")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (about a minute)")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--users", type=int, help="users of the cost workload (default 80)")
    parser.add_argument("--days", type=int, help="days per user of the cost workload (default 21)")
    parser.add_argument("--skip", action="append", default=[], choices=("assistants", "scale", "latency"),
                        help="leave a phase out (repeatable; for quick looks, not for the README)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where latest.md and latest.json go (default bench/results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logging.getLogger("coach.suite").setLevel(logging.WARNING)
    size = QUICK if args.quick else FULL
    size = replace(size, users=args.users or size.users, days=args.days or size.days)
    results = asyncio.run(run(size, args.quick, args.seed, args.out, set(args.skip)))
    failed = [t for t in results["targets"] if not t["pass"]]
    return 1 if failed and not args.quick else 0
