"""The whole suite as processes: PostgreSQL, the offline upstream, four services.

    env = {**os.environ, **free_port_env(), "COACH_POLICY": "baseline",
           "COACH_DATA_DIR": ".coach/bench-baseline"}
    async with Suite(SuiteSettings.from_env(env)) as suite:
        suite.addresses["router"]        # "127.0.0.1:50051"
        suite.child_env                  # DATABASE_URL, OPENAI_BASE_URL, ... as the services got them

``start()`` brings up PostgreSQL (embedded unless DATABASE_URL is set), the
offline OpenAI-compatible server (unless OPENAI_API_KEY / OPENAI_BASE_URL is
set), then ledger, llm, threads and router, each SERVING before the next
starts. While running, a service that dies is restarted with exponential
backoff. ``stop()`` stops the services (SIGTERM: they drain), then the offline
server, then PostgreSQL, and leaves no process behind.

A status file, ``<data dir>/suite/status.json``, says what runs with which
pid; the lock file next to it keeps two supervisors off one data directory.

Replicas (COACH_REPLICAS="router=2,threads=2,llm=2"): a service named there runs as that
many processes, each supervised on its own. The first listens on the service's address;
replica k (k = 2, 3, ...) on its port + 10*(k-1) when that is the contract's default
(router 50061, 50071; metrics 9161, ...), else on a free port; a router replica journals in
a folder of its own. Peers (and clients) reach them as production clients do: one target
listing every replica (gRPC's ``ipv4:host:port,host:port``), round_robin over it
(``Suite.targets``, also in status.json and the ready line).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from services.common.settings import (
    DEFAULT_ADDRESSES,
    DEFAULT_METRICS_PORTS,
    REPO_ROOT,
    Env,
    tls_settings,
)
from services.suite.config import OFFLINE_API_KEY, SERVICES, SuiteSettings, split_address
from services.suite.health import SERVING, wait_serving, wait_tcp
from services.suite.ports import free_ports
from services.suite.postgres import EmbeddedPostgres, PostgresError
from services.suite.processes import ChildProcess, describe_exit

log = logging.getLogger("coach.suite")


class SuiteError(RuntimeError):
    """The suite could not start; the message says what to do."""


class Suite:
    def __init__(
        self,
        settings: SuiteSettings,
        *,
        log_dir: Path | None = None,
        services: Sequence[str] = SERVICES,
    ) -> None:
        """``log_dir``: where each child's output goes (``<name>.log``); None = this process's.
        ``services``: which of the four to run (none: only PostgreSQL and the upstream)."""
        self.settings = settings
        self.names = [name for name in SERVICES if name in services]
        self.log_dir = log_dir
        self.state_dir = settings.data_dir / "suite"
        self.addresses: dict[str, str] = dict(settings.addresses)
        # Every replica's address, the first one being ``addresses[name]``.
        self.replicas: dict[str, list[str]] = {
            name: self._replica_addresses(name) for name in SERVICES}
        # What a peer or a client dials: the address, or every replica's (round_robin).
        self.targets: dict[str, str] = {
            name: _target(addrs) for name, addrs in self.replicas.items()}
        # Process keys in start order: "router", then "router-2", ...
        self.keys: list[tuple[str, str, int]] = [
            (_key(name, k), name, k) for name in self.names
            for k in range(len(self.replicas[name]))]
        self.child_env: dict[str, str] = {}
        self.database_url = ""
        self.offline_base_url: str | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.offline: ChildProcess | None = None
        self.services: dict[str, ChildProcess] = {}
        self.restarts: dict[str, int] = {key: 0 for key, _, _ in self.keys}
        self.state = "stopped"
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._lock: IO[str] | None = None
        self._tls = tls_settings(Env(settings.environ))
        self.unexpected_exits = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Starts everything in order; on failure stops what it started and raises SuiteError."""
        self.state = "starting"
        self._take_lock()
        self._write_status()
        try:
            self._check_ports_free()
            await self._start_database()
            await self._start_upstream()
            self.child_env = self._child_env()
            for key, _, _ in self.keys:
                await self._start_service(key)
        except BaseException:
            await self.stop()
            raise
        self._watchers = [
            asyncio.create_task(self._supervise(key), name=f"supervise-{key}")
            for key, _, _ in self.keys
        ]
        self.state = "ready"
        self._write_status()

    async def stop(self) -> None:
        """Services (in reverse start order), then the offline server, then PostgreSQL."""
        if self.state == "stopped" and self._lock is None:
            return
        self._stopping = True
        self.state = "stopping"
        self._write_status()
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers = []
        timeout = self.settings.stop_timeout_s
        for key, _, _ in reversed(self.keys):
            child = self.services.get(key)
            if child is not None and child.proc is not None:
                code = await child.stop(timeout)
                log.info(f"{key} stopped ({describe_exit(code)})", extra={"service": key})
        if self.offline is not None:
            await self.offline.stop(timeout)
            log.info("offline OpenAI-compatible server stopped")
        if self.postgres is not None:
            await self.postgres.stop()
        self.state = "stopped"
        self._write_status()
        self._release_lock()
        self._stopping = False

    # -- the pieces -----------------------------------------------------------------------------

    async def _start_database(self) -> None:
        if self.settings.database_url:
            self.database_url = self.settings.database_url
            log.info("DATABASE_URL is set: using that PostgreSQL (no embedded server)")
            return
        self.postgres = EmbeddedPostgres(self.settings.data_dir / "pg")
        if os.geteuid() == 0 and not self.settings.data_dir.is_relative_to(REPO_ROOT):
            log.warning(
                f"running as root: pgserver runs PostgreSQL as the system user 'pgserver' and "
                f"opens read/traverse permissions on every parent of {self.postgres.pgdata}; "
                "a COACH_DATA_DIR inside the checkout keeps that contained"
            )
        try:
            self.database_url = await self.postgres.start()
        except PostgresError as exc:
            raise SuiteError(str(exc)) from exc

    async def _start_upstream(self) -> None:
        if self.settings.upstream_given:
            env = Env(self.settings.environ)
            where = env.optional("OPENAI_BASE_URL") or "the OpenAI API"
            log.info(f"using the upstream from OPENAI_API_KEY/OPENAI_BASE_URL: {where}")
            return
        host, port = split_address(self.settings.offline_openai_addr)
        argv = [sys.executable, "-m", "services.offline_openai", "--host", host, "--port", str(port)]
        self.offline = ChildProcess("offline_openai", argv, self.settings.environ,
                                    log_file=self._log_file("offline_openai"), cwd=REPO_ROOT)
        await self.offline.spawn()
        offline = self.offline
        problem = await wait_tcp(host, port, timeout=self.settings.start_timeout_s,
                                 gave_up=lambda: _exited(offline))
        if problem:
            raise SuiteError(f"the offline OpenAI-compatible server did not start: {problem}"
                             f"{self._see_log('offline_openai')}")
        self.offline_base_url = self.settings.offline_base_url
        log.info(
            "no OPENAI_API_KEY/OPENAI_BASE_URL: using the built-in offline OpenAI-compatible "
            f"server at {self.offline_base_url} (pid {offline.pid})"
        )

    def _child_env(self) -> dict[str, str]:
        env = dict(self.settings.environ)
        env["DATABASE_URL"] = self.database_url
        env["COACH_DATA_DIR"] = str(self.settings.data_dir)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.offline_base_url:
            env["OPENAI_BASE_URL"] = self.offline_base_url
            env["OPENAI_API_KEY"] = OFFLINE_API_KEY
        for name, target in self.targets.items():
            env[f"COACH_{name.upper()}_ADDR"] = target
        return env

    def _replica_env(self, name: str, k: int) -> dict[str, str]:
        """A replica's own listen address, metrics port and (router) journal folder."""
        env = dict(self.child_env)
        if len(self.replicas[name]) == 1:
            env[f"COACH_{name.upper()}_ADDR"] = self.addresses[name]  # as before replicas
            return env
        upper = name.upper()
        env[f"COACH_{upper}_LISTEN"] = self.replicas[name][k]
        metrics = Env(self.settings.environ).int(f"COACH_{upper}_METRICS_PORT",
                                                 DEFAULT_METRICS_PORTS[name], minimum=0) or 0
        env[f"COACH_{upper}_METRICS_PORT"] = str(metrics + 10 * k if metrics else 0)
        if name == "router" and k:
            journal = env.get("COACH_ROUTER_JOURNAL_DIR") or str(
                self.settings.data_dir / "router-journal")
            env["COACH_ROUTER_JOURNAL_DIR"] = f"{journal}-{k + 1}"
        return env

    def _replica_addresses(self, name: str) -> list[str]:
        first = self.addresses[name]
        n = self.settings.replica_count(name) if name in self.names else 1
        if n == 1:
            return [first]
        host, port = split_address(first.removeprefix("dns:///"))
        if first == DEFAULT_ADDRESSES[name]:
            return [first] + [f"{host}:{port + 10 * k}" for k in range(1, n)]
        return [first] + [f"{host}:{p}" for p in free_ports(n - 1, host)]

    async def _start_service(self, key: str) -> None:
        name, k = _name_of(key)
        address = self.replicas[name][k]
        child = ChildProcess(key, self.settings.program(name), self._replica_env(name, k),
                             log_file=self._log_file(key), cwd=REPO_ROOT)
        self.services[key] = child
        await child.spawn()
        self._write_status()
        status = await wait_serving(address, timeout=self.settings.start_timeout_s,
                                    tls=self._tls, gave_up=lambda: _exited(child))
        if status != SERVING:
            raise SuiteError(f"{key} did not become SERVING at {address} "
                             f"within {self.settings.start_timeout_s:.0f}s: {status}"
                             f"{self._see_log(key)}")
        log.info(f"{key} SERVING at {address} (pid {child.pid})",
                 extra={"service": key, "pid": child.pid})
        self._write_status()

    async def _supervise(self, name: str) -> None:
        """Restarts ``name`` whenever it exits, with exponential backoff while it keeps failing."""
        backoff = self.settings.backoff_initial_s
        while True:
            child = self.services[name]
            code = await child.wait()
            if self._stopping:
                return
            self.unexpected_exits += 1
            if child.uptime() >= self.settings.stable_after_s:
                backoff = self.settings.backoff_initial_s
            log.warning(f"{name} exited ({describe_exit(code)}); restarting in {backoff:.1f}s",
                        extra={"service": name, "exit_code": code, "backoff_s": backoff})
            self.state = "degraded"
            self._write_status()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.backoff_max_s)
            self.restarts[name] += 1
            try:
                await self._start_service(name)
            except SuiteError as exc:
                log.error(f"restart of {name} failed: {exc}", extra={"service": name})
                await self.services[name].stop(self.settings.stop_timeout_s)
                continue
            log.info(f"{name} restarted (restart #{self.restarts[name]})",
                     extra={"service": name, "restarts": self.restarts[name]})
            if all(c.running for c in self.services.values()):
                self.state = "ready"
                self._write_status()

    # -- status, locks, ports -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "supervisor_pid": os.getpid(),
            "state": self.state,
            "data_dir": str(self.settings.data_dir),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "services": {
                key: {
                    "address": self.replicas[_name_of(key)[0]][_name_of(key)[1]],
                    "pid": child.pid if child.running else None,
                    "restarts": self.restarts[key],
                }
                for key, child in self.services.items()
            },
            "targets": {name: self.targets[name] for name in self.names},
            "offline_openai": None if self.offline is None else {
                "base_url": self.offline_base_url, "pid": self.offline.pid if self.offline.running else None,
            },
            "postgres": None if self.postgres is None else {
                "pgdata": str(self.postgres.pgdata), "pid": self.postgres.pid,
            },
        }

    def _write_status(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "status.json.tmp"
        tmp.write_text(json.dumps(self.status(), indent=2) + "\n")
        tmp.replace(self.state_dir / "status.json")

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = (self.state_dir / "lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SuiteError(
                f"another suite is running with COACH_DATA_DIR={self.settings.data_dir}: stop it "
                "first, or give this one its own COACH_DATA_DIR and ports"
            ) from None
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _check_ports_free(self) -> None:
        wanted = [(f"COACH_{n.upper()}_ADDR", addr) for n in self.names for addr in self.replicas[n]]
        if not self.settings.upstream_given:
            wanted.append(("COACH_OFFLINE_OPENAI_ADDR", self.settings.offline_openai_addr))
        for var, addr in wanted:
            host, port = split_address(addr)
            if port and _port_in_use(host, port):
                raise SuiteError(
                    f"{addr} is already in use (another `make up`?): stop that, or choose "
                    f"another address with {var}"
                )

    def _log_file(self, name: str) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{name}.log"

    def _see_log(self, name: str) -> str:
        path = self._log_file(name)
        return f" (see {path})" if path else " (see its output above)"


def _key(name: str, k: int) -> str:
    return name if k == 0 else f"{name}-{k + 1}"


def _name_of(key: str) -> tuple[str, int]:
    name, _, n = key.partition("-")
    return name, int(n) - 1 if n else 0


def _target(addresses: list[str]) -> str:
    """One address, or gRPC's list target for several (round_robin over them)."""
    if len(addresses) == 1:
        return addresses[0]
    return "ipv4:" + ",".join(addresses)


def _exited(child: ChildProcess) -> str | None:
    return None if child.running else f"the process ended ({describe_exit(child.returncode)})"


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
