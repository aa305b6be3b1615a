"""Running `python -m services.suite up` as a person would, and checking what it left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.suite.ports import free_port
from tests.helpers.polling import eventually_blocking

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("router", "llm", "threads", "ledger")


def health(address: str, timeout: float = 2.0) -> str:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as err:
            return f"UNREACHABLE {err.code().name}"  # type: ignore[attr-defined]
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or environment mentions ``text`` (this test's
    data directory): what a clean stop must not leave behind."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if (needle in cmdline or needle in environ) and pid_alive(int(entry.name)):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command}")
    return found


@dataclass
class SuiteRun:
    """One `python -m services.suite up` in the background, on its own ports and data dir."""

    data_dir: Path
    env: dict[str, str]
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    seen_pids: set[int] = field(default_factory=set)

    @property
    def addresses(self) -> dict[str, str]:
        return {name: self.env[f"COACH_{name.upper()}_ADDR"] for name in SERVICES}

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=REPO_ROOT,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.data_dir / "suite" / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def wait_for(self, what: str, check: Any, timeout: float = 120.0) -> Any:
        """``check()`` once it is truthy; fails at once if the supervisor exits meanwhile."""

        def holds() -> Any:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the supervisor exited ({self.proc.returncode}) while "
                                     f"waiting for {what}:\n{self.log()[-4000:]}")
            return check()

        return eventually_blocking(holds, timeout=timeout, interval=0.2,
                                   what=lambda: f"{what}:\n{self.log()[-4000:]}")

    def wait_ready(self) -> dict[str, Any]:
        status = self.wait_for("state ready", lambda: (s := self.status()).get("state") == "ready"
                               and s)
        for svc in status["services"].values():
            self.seen_pids.add(svc["pid"])
        for part in ("offline_openai", "postgres"):
            if status.get(part) and status[part].get("pid"):
                self.seen_pids.add(status[part]["pid"])
        return dict(status)

    def terminate(self, timeout: float = 90.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the supervisor did not stop within {timeout}s:\n{self.log()}")

    def kill_everything(self) -> None:
        """Last-resort clean-up after a failed test: nothing of ours may outlive it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
            if self.proc.poll() is None:
                self.proc.kill()
        for line in processes_mentioning(str(self.data_dir)):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


@contextlib.contextmanager
def suite_run(extra_args: list[str], extra_env: dict[str, str] | None = None,
              data_dir: Path | None = None) -> Iterator[SuiteRun]:
    """A supervisor on free ports, COACH_DATA_DIR under the checkout's .coach/, stopped and
    cleaned up afterwards (the data dir too, unless the caller passed its own)."""
    own_dir = data_dir is None
    data_dir = data_dir or REPO_ROOT / ".coach" / f"test-suite-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COACH_", "OPENAI_")) and k != "DATABASE_URL"}
    env.update({
        "COACH_DATA_DIR": str(data_dir),
        "COACH_OFFLINE_OPENAI_ADDR": f"127.0.0.1:{free_port()}",
        "COACH_SHUTDOWN_GRACE_SECONDS": "5",
        "COACH_LOG_LEVEL": "WARNING",
        **{f"COACH_{name.upper()}_ADDR": f"127.0.0.1:{free_port()}" for name in SERVICES},
        **{f"COACH_{name.upper()}_METRICS_PORT": "0" for name in SERVICES},
        **(extra_env or {}),
    })
    run = SuiteRun(data_dir, env, [sys.executable, "-m", "services.suite", "up", *extra_args],
                   data_dir.parent / f"{data_dir.name}-{uuid.uuid4().hex[:6]}.log")
    run.start()
    try:
        yield run
    finally:
        run.kill_everything()
        run.log_path.unlink(missing_ok=True)
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
