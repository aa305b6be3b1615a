"""``python -m services.suite COMMAND``: run, check and wait for the suite.

  up                 the whole suite in the foreground, supervised (``make up``)
  env                only PostgreSQL and the offline upstream; prints export lines
  healthcheck ADDR   exit 0 if ADDR answers grpc.health.v1 SERVING (Docker healthchecks)
  wait ADDR...       wait until every ADDR is SERVING
  status             the running suite's status file

The supervisor talks to a person at a terminal, so its own lines are plain
text on stdout; the services it runs log JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.errors import ConfigError
from services.common.settings import Env, data_dir, tls_settings

if TYPE_CHECKING:  # the supervisor's imports are kept off the healthcheck's path
    from services.suite.suite import Suite

log = logging.getLogger("coach.suite")


def _console_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s suite: %(message)s", datefmt="%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.suite",
                                     description="Run, supervise and check the coach suite.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole suite in the foreground, supervised")
    up.add_argument("--log-dir", type=Path, default=None,
                    help="write each process's output to DIR/<name>.log instead of this terminal")
    up.add_argument("--program", action="append", default=[], metavar="NAME=COMMAND",
                    help="run service NAME with COMMAND instead of `python -m services.NAME`")
    env = sub.add_parser("env", help="start PostgreSQL and the offline upstream; print exports")
    env.add_argument("--log-dir", type=Path, default=None)
    check = sub.add_parser("healthcheck", help="exit 0 if ADDR is SERVING")
    check.add_argument("address")
    check.add_argument("--service", default="", help="health service name (default: overall)")
    check.add_argument("--timeout", type=float, default=3.0)
    wait = sub.add_parser("wait", help="wait until every ADDR is SERVING")
    wait.add_argument("addresses", nargs="+")
    wait.add_argument("--timeout", type=float, default=60.0)
    sub.add_parser("status", help="print the running suite's status file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "healthcheck":
            return asyncio.run(_healthcheck(args.address, args.service, args.timeout))
        if args.command == "wait":
            return asyncio.run(_wait(args.addresses, args.timeout))
        if args.command == "status":
            return _status()
        _console_logging()
        if args.command == "up":
            return asyncio.run(_up(args.log_dir, args.program))
        return asyncio.run(_env(args.log_dir))
    except ConfigError as exc:
        sys.stderr.write(f"suite: configuration error: {exc}\n")
        return 2


async def _healthcheck(address: str, service: str, timeout: float) -> int:
    from services.suite.health import SERVING, health_status

    status = await health_status(address, service=service, timeout=timeout,
                                 tls=tls_settings(Env()))
    if status != SERVING:
        sys.stderr.write(f"{address}: {status}\n")
        return 1
    return 0


async def _wait(addresses: Sequence[str], timeout: float) -> int:
    from services.suite.health import SERVING, wait_serving

    tls = tls_settings(Env())
    results = await asyncio.gather(*(wait_serving(a, timeout=timeout, tls=tls) for a in addresses))
    bad = [f"{a}: {s}" for a, s in zip(addresses, results, strict=True) if s != SERVING]
    for line in bad:
        sys.stderr.write(line + "\n")
    return 1 if bad else 0


def _status() -> int:
    path = data_dir(Env()) / "suite" / "status.json"
    try:
        sys.stdout.write(path.read_text())
    except OSError:
        sys.stderr.write(f"no suite status at {path}\n")
        return 1
    return 0


async def _until_signal(suite_start: asyncio.Task[None]) -> bool:
    """Waits for SIGINT/SIGTERM; returns False if one came before ``suite_start`` finished."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def requested(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info(f"{sig.name} again: already stopping")
            return
        log.info(f"{sig.name}: stopping the suite")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, requested, sig)
    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait({suite_start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not suite_start.done():
        suite_start.cancel()
        await asyncio.gather(suite_start, return_exceptions=True)
        return False
    if suite_start.exception() is not None:
        stop_wait.cancel()
        return False
    await stop_wait
    return True


async def _up(log_dir: Path | None, programs: Sequence[str]) -> int:
    from services.suite.config import SuiteSettings, parse_program
    from services.suite.suite import Suite, SuiteError

    settings = SuiteSettings.from_env(programs=dict(parse_program(p) for p in programs))
    suite = Suite(settings, log_dir=log_dir)
    start = asyncio.create_task(_start_and_announce(suite))
    try:
        await _until_signal(start)
        if start.done() and not start.cancelled() and start.exception() is not None:
            raise start.exception()  # type: ignore[misc]
    except SuiteError as exc:
        log.error(f"cannot start the suite: {exc}")
        await suite.stop()
        return 1
    await suite.stop()
    log.info("stopped cleanly")
    return 0


async def _start_and_announce(suite: Suite) -> None:
    await suite.start()
    addrs = ", ".join(f"{name} {suite.targets[name]}" for name in reversed(suite.names))
    db = (f"embedded PostgreSQL in {suite.postgres.pgdata}" if suite.postgres
          else "DATABASE_URL")
    upstream = suite.offline_base_url or "OPENAI_API_KEY/OPENAI_BASE_URL"
    log.info(f"ready: {addrs}; database: {db}; upstream: {upstream}. Ctrl-C stops everything.")


async def _env(log_dir: Path | None) -> int:
    from services.suite.config import SuiteSettings
    from services.suite.suite import Suite, SuiteError

    suite = Suite(SuiteSettings.from_env(), log_dir=log_dir, services=())

    async def start() -> None:
        await suite.start()
        exports = {"DATABASE_URL": suite.database_url}
        if suite.offline_base_url:
            exports["OPENAI_BASE_URL"] = suite.offline_base_url
            exports["OPENAI_API_KEY"] = suite.child_env["OPENAI_API_KEY"]
        text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports.items())
        env_file = suite.state_dir / "env.sh"
        env_file.write_text(text)
        sys.stdout.write(text)
        sys.stdout.flush()
        log.info(f"(also in {env_file}: `source` it in another shell). Ctrl-C stops both.")

    task = asyncio.create_task(start())
    try:
        await _until_signal(task)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    except SuiteError as exc:
        log.error(f"cannot start: {exc}")
        await suite.stop()
        return 1
    await suite.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
