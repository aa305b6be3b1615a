"""The embedded PostgreSQL (PyPI ``pgserver``: PostgreSQL 16 on a unix socket).

pgserver starts the server through ``pg_ctl``, which leaves ``postgres``
running as a daemon. We start it from a helper process in a new session so
the daemon is outside the terminal's process group (a Ctrl-C reaches the
supervisor, not the database under the services still draining), and stop it
ourselves with ``pg_ctl stop -m fast``, then make sure the postmaster is gone.

As root, pgserver runs the server as a system user ``pgserver`` and opens read
and traverse permissions on the data directory's parents: keep the data
directory inside the checkout (the default ``.coach/pg``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from services.suite.processes import pid_alive

log = logging.getLogger("coach.suite")

DATABASE = "coach"

_START = """
import sys
import pgserver
server = pgserver.get_server(sys.argv[1], cleanup_mode=None)
sys.stdout.write(server.get_uri() + "\\n" + str(server.get_pid()) + "\\n")
"""


class PostgresError(RuntimeError):
    pass


SYSTEM_USER = "pgserver"  # the user pgserver runs PostgreSQL as, when started by root
_USERADD_EXISTS = 9  # useradd's exit status when the user exists already


def ensure_system_user(name: str = SYSTEM_USER) -> None:
    """As root, pgserver runs PostgreSQL as a system user and creates it with ``useradd``
    when it is missing, with no lock: embedded servers starting at once on a machine that
    has no such user yet (a quick bench starts four, on a new machine) race, and every
    useradd but the first fails ("cannot lock /etc/passwd", "already exists"), and with it
    that server's start. So the user is created here first, once, under a file lock."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        return
    lock_path = Path(tempfile.gettempdir()) / f"coach-useradd-{name}.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return
        done = subprocess.run(["useradd", "-s", "/bin/bash", name], check=False,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode not in (0, _USERADD_EXISTS):
            raise PostgresError(f"cannot create the system user {name!r} PostgreSQL runs as: "
                                f"useradd: {done.stderr.strip() or done.returncode}")


@dataclass
class EmbeddedPostgres:
    pgdata: Path
    admin_url: str = ""
    pid: int | None = None

    @property
    def url(self) -> str:
        """The ``coach`` database on this server."""
        head, sep, query = self.admin_url.partition("?")
        return f"{head.rsplit('/', 1)[0]}/{DATABASE}{sep}{query}"

    async def start(self, timeout: float = 120.0) -> str:
        """Starts (or adopts an already running) server; creates database ``coach``; returns its URL."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (self.pgdata / "PG_VERSION").exists()
        await asyncio.to_thread(ensure_system_user)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _START, str(self.pgdata),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PostgresError(f"PostgreSQL did not start within {timeout:.0f}s; {self._log_tail()}")
        if proc.returncode != 0:
            raise PostgresError(
                f"PostgreSQL did not start (pgserver: exit code {proc.returncode}):\n"
                f"{err.decode(errors='replace')[-2000:]}\n{self._log_tail()}"
            )
        lines = out.decode().split()
        self.admin_url, self.pid = lines[0], int(lines[1])
        await self._ensure_database()
        log.info(
            f"PostgreSQL 16 {'initialised and ' if fresh else ''}running in {self.pgdata} "
            f"(pid {self.pid}, unix socket)",
            extra={"pgdata": str(self.pgdata), "pid": self.pid},
        )
        return self.url

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()

    async def stop(self, timeout: float = 30.0) -> None:
        """pg_ctl stop -m fast; SIGKILL if the postmaster outlives ``timeout``."""
        await asyncio.to_thread(self._stop_blocking, timeout)

    def _stop_blocking(self, timeout: float) -> None:
        pid = self._postmaster_pid() or self.pid
        if pid is None or not pid_alive(pid):
            return
        cmd = [str(_pg_bin() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w",
               "-t", str(int(timeout)), "stop"]
        user = _data_owner(self.pgdata) if os.geteuid() == 0 else None
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=timeout + 5, user=user,
                           stdin=subprocess.DEVNULL)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log.warning(f"pg_ctl stop failed ({exc}); killing the postmaster",
                        extra={"pid": pid})
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._kill_leftovers()
        log.info("PostgreSQL stopped", extra={"pid": pid})

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _kill_leftovers(self) -> None:
        """Backends outlive a SIGKILLed postmaster briefly; none may stay behind."""
        import psutil

        needle = str(self.pgdata)
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if proc.info.get("name") == "postgres" and any(needle in part for part in cmdline):
                with contextlib.suppress(psutil.Error):
                    proc.kill()

    def _log_tail(self) -> str:
        try:
            text = (self.pgdata / "log").read_text(errors="replace")
        except OSError:
            return "no server log"
        return f"server log ({self.pgdata / 'log'}):\n{text[-2000:]}"


def _pg_bin() -> Path:
    """pgserver's bundled binaries, found without importing pgserver (whose import has side
    effects: a runtime directory and a lock file)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError("the pgserver package is not installed (it is in requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _data_owner(path: Path) -> str | None:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        return None
