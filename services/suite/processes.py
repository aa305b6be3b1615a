"""Child processes in their own process groups, stopped politely then firmly.

Each child leads its own process group (a new session), so a Ctrl-C in the
terminal reaches only the supervisor, which then stops the children in order,
and anything a child forks is stopped with it. On Linux our programs also get
SIGTERM if the supervisor itself dies without cleaning up: they ask for it at
start (``services.common.supervision``, given ``COACH_SUPERVISOR_PID``), so that
no code runs between fork and exec here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from services.common.supervision import SUPERVISOR_PID_ENV

log = logging.getLogger("coach.suite")


class ChildProcess:
    """One command run as its own process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        log_file: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = {**env, SUPERVISOR_PID_ENV: str(os.getpid())}
        self.log_file = log_file
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    async def spawn(self) -> int:
        out: IO[bytes] | None = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = out = self.log_file.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        return self.proc.pid

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        self._close_log()
        return code

    def uptime(self) -> float:
        return time.monotonic() - self.started_at if self.started_at else 0.0

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM to the group, wait up to ``timeout`` s, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        pgid = self.proc.pid  # leader of its own session, so pgid == pid
        if self.proc.returncode is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                log.warning(f"{self.name} did not stop within {timeout:.0f}s: killing it",
                            extra={"service": self.name, "pid": pgid})
                _signal_group(pgid, signal.SIGKILL)
                await self.proc.wait()
        # Whatever it forked and left behind goes too.
        _signal_group(pgid, signal.SIGKILL)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True
