"""Open-loop load: messages arrive at a set rate whatever the suite's latency (issue 19, point 5).

The closed-loop scale phase of ``make bench`` (500 users, each sending their next message
once the last is answered) measures a saturated system: its latency is users / throughput
(Little's law), whatever the suite does. Here arrivals are a Poisson process at a given
rate, as a coaching app's users are: each arrival is the next message of a user who has
none in flight (a user's messages stay in order), from the bench's workload (onboarding,
canned, cheap, stateful, crisis). The rate steps up; per step: Chat p50/p99 of the
messages that arrived in it, errors, and CPU per message per service from the services'
own metrics (``process_cpu_seconds_total`` of every replica). The highest rate held is the
highest step whose Chat p99 stays within the upstream latency + 250 ms, with no error.

    .venv/bin/python -m bench.open_loop --replicas router=2,threads=2,llm=2 \
        --rates 20,40,60,80 --step-s 15

The users are established ones, as the issue's own measurement had (400 users): an unmeasured
warm-up first sends every user their onboarding messages (COACH_ONBOARDING_MESSAGES, 3, all
on the stateful tier, a first one creating the provider conversation) at up to 40/s, then
their next ones at up to 80/s, 3 to 25 messages each (14 on average, spread evenly): most
past the first filling of their conversation's window (20 messages), each at their own
stage of it, so that every measured step carries the upkeep of a running app (a fold and a
rotation every stateful turn or two), not only the route mix of users past their first days.
With the onboarding alone as warm-up, the windows filled during the third step: the first
steps measured no rotations and the later ones everyone's first rotation at once. ``--warm-up 0``
measures newcomers instead.

Also splits the stateful turns of each step (threads' "stateful turn" log lines): waiting
for the user's turn (lock and lease), preparing the conversation, the upstream turn, storing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from coach.router.v1 import router_service_pb2, router_service_pb2_grpc
from coach.type.v1 import types_pb2
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import BenchSuite
from bench.replay import percentile
from bench.workload import Message, User, build_workload

log = logging.getLogger("bench.open_loop")
RESULTS = Path(__file__).parent / "results"
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
SLACK_MS = 250.0  # the target: Chat p99 <= upstream latency + this
# A user's first messages go to the stateful tier (the router's COACH_ONBOARDING_MESSAGES).
ONBOARDING_MESSAGES = 3


@dataclass
class Step:
    rate: float
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    routes: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    turns: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def summary(self, upstream_ms: int) -> dict[str, Any]:
        done = len(self.latencies_ms)
        p99 = percentile(self.latencies_ms, 0.99) if done else 0.0
        return {
            "rate": self.rate, "sent": self.sent, "answered": done,
            "achieved_per_s": round(done / self.wall_s, 1) if self.wall_s else 0.0,
            "p50_ms": round(percentile(self.latencies_ms, 0.5), 1) if done else 0.0,
            "p99_ms": round(p99, 1), "errors": self.errors, "routes": self.routes,
            "held": bool(done) and not self.errors and p99 <= upstream_ms + SLACK_MS,
            "cpu_ms_per_message": {k: round(v * 1000 / done, 2) for k, v in self.cpu_s.items()}
            if done else {},
            "stateful_turn_ms": self.turns,
        }


class Users:
    """Users with messages left and none in flight, in a round-robin queue. While ``quota``
    is set (the warm-up), a user who has sent their quota waits aside until it is lifted."""

    def __init__(self, users: list[User]) -> None:
        self.all_users = list(users)
        self.idle: deque[tuple[User, int]] = deque((u, 0) for u in users)
        self.quota: dict[str, int] | None = None
        self._aside: list[tuple[User, int]] = []

    def take(self) -> tuple[User, int, Message] | None:
        while self.idle:
            user, i = self.idle.popleft()
            if self.quota is not None and i >= self.quota.get(user.user_id, 0):
                self._aside.append((user, i))
                continue
            if i < len(user.messages):
                return user, i, user.messages[i]
        return None

    def set_quota(self, quota: dict[str, int] | None) -> None:
        """A new quota (None: none); those waiting aside are back in the queue."""
        self.quota = quota
        self.idle.extend(self._aside)
        self._aside.clear()

    def give_back(self, user: User, i: int) -> None:
        self.idle.append((user, i + 1))


async def cpu_seconds(suite: BenchSuite) -> dict[str, float]:
    """service -> process CPU seconds summed over its replicas (their /metrics)."""
    assert suite.suite is not None
    totals: dict[str, float] = {}
    async with aiohttp.ClientSession() as http:
        for service, base in suite.metrics_ports.items():
            for k in range(len(suite.suite.replicas[service])):
                try:
                    async with http.get(f"http://127.0.0.1:{base + 10 * k}/metrics") as resp:
                        text = await resp.text()
                except aiohttp.ClientError:
                    continue
                for family in text_string_to_metric_families(text):
                    if family.name == "process_cpu_seconds":
                        for sample in family.samples:
                            totals[service] = totals.get(service, 0.0) + sample.value
    return totals


def turn_lines(log_dir: Path) -> list[dict[str, Any]]:
    """Threads' "stateful turn" lines, and its "conversation rotated" ones (a rotation on
    the turn's own path: a Summarize and a new conversation before the reply; a rotation
    ahead logs another event)."""
    lines: list[dict[str, Any]] = []
    for path in sorted(log_dir.glob("threads*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if '"stateful turn"' in line or '"conversation rotated"' in line:
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
    return lines


def turn_split(lines: list[dict[str, Any]]) -> dict[str, float]:
    turns = [x for x in lines if x.get("event") == "stateful turn"]
    if not turns:
        return {}
    keys = ("wait_ms", "prepare_ms", "upstream_ms", "store_ms", "latency_ms")
    return {"turns": len(turns),
            "rotated_on_path": sum(x.get("event") == "conversation rotated" for x in lines),
            **{k: round(sum(float(x.get(k, 0)) for x in turns) / len(turns), 1) for k in keys}}


async def run_step(stubs: list[Any], users: Users, rate: float, step_s: float, tag: str,
                   timeout_s: float, limit: int | None = None) -> Step:
    step = Step(rate)
    rng = random.Random(f"{tag}/{rate}")
    tasks: set[asyncio.Task[None]] = set()

    async def one(user: User, i: int, m: Message) -> None:
        stub = stubs[rng.randrange(len(stubs))]
        t0 = time.perf_counter()
        try:
            reply = await stub.Chat(router_service_pb2.ChatRequest(
                user_id=user.user_id, message=m.text, request_id=f"{tag}-{user.user_id}-{i}",
                context=types_pb2.UserContext(display_name=m.display_name,
                                              current_streak=m.streak, local_hour=m.local_hour)),
                timeout=timeout_s)
            step.latencies_ms.append((time.perf_counter() - t0) * 1000)
            route = types_pb2.Route.Name(reply.route).removeprefix("ROUTE_")
            step.routes[route] = step.routes.get(route, 0) + 1
        except grpc.aio.AioRpcError as exc:
            step.errors[exc.code().name] = step.errors.get(exc.code().name, 0) + 1
        users.give_back(user, i)

    started = time.perf_counter()
    next_at = started
    while next_at - started < step_s and (limit is None or step.sent < limit):
        next_at += rng.expovariate(rate)
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        taken = users.take()
        if taken is None:
            step.errors["NO_IDLE_USER"] = step.errors.get("NO_IDLE_USER", 0) + 1
            continue
        task = asyncio.create_task(one(*taken))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        step.sent += 1
    if tasks:
        await asyncio.wait(set(tasks))
    step.wall_s = time.perf_counter() - started
    return step


async def measure(replicas: str, rates: list[float], step_s: float, latency_ms: int,
                  users: int, days: int, warm_up: int, seed: int) -> dict[str, Any]:
    name = "open-loop-" + (replicas.replace(",", "-").replace("=", "") or "one")
    extra = {"COACH_REPLICAS": replicas} if replicas else {}
    suite = BenchSuite(name, latency_ms=latency_ms, extra_env=extra)
    await suite.start()
    assert suite.suite is not None
    channels = [grpc.aio.insecure_channel(suite.suite.targets["router"],
                                          options=[("grpc.service_config", ROUND_ROBIN)])
                for _ in range(4)]
    stubs = [router_service_pb2_grpc.RouterServiceStub(c) for c in channels]
    pool = Users(build_workload(users, days, seed, prefix=f"ol{seed % 1000}"))
    steps: list[dict[str, Any]] = []
    warmed: dict[str, Any] = {}
    try:
        # Each user sends their first quota of messages: the onboarding ones at most at
        # 40/s (all stateful, a first one two upstream calls, and a saturated warm-up would
        # leave users with none idle), then the rest at most at 80/s. The quotas are spread
        # evenly over ONBOARDING_MESSAGES .. 2 x warm_up - that, so users are at every stage
        # of their conversation's window, as an app's are, not all filling it at once.
        rng = random.Random(seed)
        onboarding = min(warm_up, ONBOARDING_MESSAGES)
        quota = {u.user_id: (rng.randint(onboarding, max(onboarding, 2 * warm_up - onboarding))
                             if warm_up else 0) for u in pool.all_users}
        phases = [({k: min(q, onboarding) for k, q in quota.items()}, min([*rates, 40.0])),
                  (quota, min(max(rates), 80.0))]
        sent = 0
        for phase_quota, warm_rate in phases:
            count = sum(phase_quota.values()) - sent
            if not count:
                continue
            pool.set_quota(phase_quota)
            done = await run_step(stubs, pool, warm_rate, 10 * count / warm_rate,
                                  f"{name}-warm", timeout_s=30, limit=count)
            sent += done.sent
            warmed["messages"] = warmed.get("messages", 0) + done.sent
            errors = warmed.setdefault("errors", {})
            for code, n in done.errors.items():
                errors[code] = errors.get(code, 0) + n
            log.info(f"[{name}] warm-up: {done.sent} messages at {warm_rate:g}/s, "
                     f"routes {done.routes}, errors {done.errors}")
        pool.set_quota(None)
        for rate in rates:
            cpu_before = await cpu_seconds(suite)
            turns_before = len(turn_lines(suite.log_dir))
            step = await run_step(stubs, pool, rate, step_s, name, timeout_s=30)
            cpu_after = await cpu_seconds(suite)
            step.cpu_s = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
            step.turns = turn_split(turn_lines(suite.log_dir)[turns_before:])
            summary = step.summary(latency_ms)
            steps.append(summary)
            log.info(f"[{name}] {rate:g}/s: {summary['achieved_per_s']}/s answered, "
                     f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, "
                     f"errors {summary['errors']}, held {summary['held']}, "
                     f"cpu ms/msg {summary['cpu_ms_per_message']}, turns {summary['stateful_turn_ms']}")
            if summary["p99_ms"] > 4 * (latency_ms + SLACK_MS):
                break  # far past saturation: higher rates only queue more
    finally:
        for c in channels:
            await c.close()
        await suite.stop()
    held = [s["rate"] for s in steps if s["held"]]
    return {"replicas": replicas or "one of each", "upstream_ms": latency_ms, "step_s": step_s,
            "users": users, "warm_up": warmed,
            "highest_rate_held": max(held) if held else 0, "steps": steps}


def markdown(runs: list[dict[str, Any]]) -> str:
    out = [("| replicas | rate (msg/s) | answered/s | stateful | p50 (ms) | p99 (ms) | held | "
            "errors | CPU ms/msg router / threads / llm / ledger | stateful turn: wait / "
            "prepare / upstream / store (ms) | rotated on the turn's path |"),
           "|---|---:|---:|---:|---:|---:|---|---|---|---|---:|"]
    for run in runs:
        for s in run["steps"]:
            cpu = s["cpu_ms_per_message"]
            t = s["stateful_turn_ms"]
            stateful = s["routes"].get("ASSISTANT", 0) / max(1, s["answered"])
            out.append(
                f"| {run['replicas']} | {s['rate']:g} | {s['achieved_per_s']} | {stateful:.0%} | "
                f"{s['p50_ms']} | {s['p99_ms']} | {'yes' if s['held'] else 'no'} | "
                f"{s['errors'] or 0} | "
                + " / ".join(f"{cpu.get(k, 0):.1f}" for k in ("router", "threads", "llm", "ledger"))
                + " | " + (" / ".join(f"{t.get(k, 0):.0f}" for k in
                                      ("wait_ms", "prepare_ms", "upstream_ms", "store_ms"))
                           if t else "-") + f" | {t.get('rotated_on_path', '-') if t else '-'} |")
    out.append("")
    for run in runs:
        warm = run.get("warm_up") or {}
        users = (f"{run['users']} users, each at their own stage (a warm-up of "
                 f"{warm['messages']} messages first, 3 to 25 a user, not measured)"
                 if warm else f"{run.get('users', '?')} new users, no warm-up")
        out.append(f"{run['replicas']}: {users}.")
    for run in runs:
        out.append(f"Highest rate held ({run['replicas']}, Chat p99 <= {run['upstream_ms']} + "
                   f"{SLACK_MS:.0f} ms): {run['highest_rate_held']:g} messages/s.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", action="append", default=[],
                        help='COACH_REPLICAS of one run, e.g. "router=2,threads=2,llm=2" '
                             '("" = one of each); repeatable')
    parser.add_argument("--rates", default="20,40,60,80,100",
                        help="messages per second, one step each")
    parser.add_argument("--step-s", type=float, default=15.0)
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--days", type=int, default=21,
                        help="of workload per user (21: at least 50 messages each)")
    parser.add_argument("--warm-up", type=int, default=14,
                        help="unmeasured messages per user first, on average (onboarding, "
                             "then most users past the first filling of their window)")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logging.getLogger("coach.suite").setLevel(logging.WARNING)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]

    async def all_runs() -> list[dict[str, Any]]:
        return [await measure(r, rates, args.step_s, args.latency_ms, args.users, args.days,
                              args.warm_up, args.seed)
                for r in (args.replicas or [""])]

    runs = asyncio.run(all_runs())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "open_loop.json").write_text(json.dumps(runs, indent=2) + "\n")
    text = markdown(runs)
    (args.out / "open_loop.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
