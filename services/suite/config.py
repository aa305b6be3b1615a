"""What the supervisor runs and where, parsed once from the environment.

The four services read their own settings; the supervisor only decides what
it must provide for them (a database, an upstream, peer addresses) and passes
the rest of the environment through unchanged.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import ConfigError
from services.common.settings import DEFAULT_ADDRESSES, Env, data_dir
from services.suite.ports import free_ports

# Start order: each one's peers are already SERVING when it starts
# (llm and threads use ledger; router uses all three).
SERVICES: tuple[str, ...] = ("ledger", "llm", "threads", "router")
DEFAULT_OFFLINE_OPENAI_ADDR = "127.0.0.1:50090"
OFFLINE_API_KEY = "offline"  # the offline server accepts any key; the openai SDK needs one


@dataclass(frozen=True)
class SuiteSettings:
    data_dir: Path
    addresses: Mapping[str, str]  # service -> host:port its peers dial (COACH_<SVC>_ADDR)
    environ: Mapping[str, str]  # passed to every child, then overridden by what the suite provides
    database_url: str | None  # DATABASE_URL as given; None = start the embedded PostgreSQL
    upstream_given: bool  # OPENAI_API_KEY or OPENAI_BASE_URL set: no offline server
    offline_openai_addr: str
    programs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Processes per service (COACH_REPLICAS="router=2,threads=2,llm=2"); 1 when not named.
    replicas: Mapping[str, int] = field(default_factory=dict)
    start_timeout_s: float = 90.0  # per service, until SERVING
    stop_timeout_s: float = 20.0  # per process, SIGTERM -> SIGKILL
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    stable_after_s: float = 30.0  # up this long -> the next crash restarts at the initial backoff

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        programs: Mapping[str, Sequence[str]] | None = None,
    ) -> SuiteSettings:
        env_map = dict(os.environ if environ is None else environ)
        env = Env(env_map)
        addresses = {
            name: env.str(f"COACH_{name.upper()}_ADDR", DEFAULT_ADDRESSES[name]) for name in SERVICES
        }
        for name, addr in addresses.items():
            _check_address(f"COACH_{name.upper()}_ADDR", addr)
        offline = env.str("COACH_OFFLINE_OPENAI_ADDR", DEFAULT_OFFLINE_OPENAI_ADDR)
        _check_address("COACH_OFFLINE_OPENAI_ADDR", offline)
        progs = {name: tuple(argv) for name, argv in (programs or {}).items()}
        for name, argv in progs.items():
            if name not in SERVICES:
                raise ConfigError(f"unknown service {name!r}: one of {', '.join(SERVICES)}")
            if not argv:
                raise ConfigError(f"empty command for {name}")
        replicas = parse_replicas(env.str("COACH_REPLICAS", ""))
        stop_timeout = env.float("COACH_SUITE_STOP_TIMEOUT_S", 0.0)
        grace = env.float("COACH_SHUTDOWN_GRACE_SECONDS", 10.0)
        return cls(
            data_dir=data_dir(env),
            addresses=addresses,
            environ=env_map,
            database_url=env.optional("DATABASE_URL"),
            upstream_given=bool(env.optional("OPENAI_API_KEY") or env.optional("OPENAI_BASE_URL")),
            offline_openai_addr=offline,
            programs=progs,
            replicas=replicas,
            start_timeout_s=env.float("COACH_SUITE_START_TIMEOUT_S", 90.0, minimum=1.0),
            # Services drain for COACH_SHUTDOWN_GRACE_SECONDS; give them that and a margin.
            stop_timeout_s=stop_timeout or grace + 10.0,
        )

    def program(self, service: str) -> tuple[str, ...]:
        """The command that runs ``service``: ``python -m services.<name>`` unless overridden."""
        return self.programs.get(service) or (sys.executable, "-m", f"services.{service}")

    def replica_count(self, service: str) -> int:
        return self.replicas.get(service, 1)

    @property
    def offline_base_url(self) -> str:
        return f"http://{self.offline_openai_addr}/v1"


def free_port_env(host: str = "127.0.0.1") -> dict[str, str]:
    """Environment for a second suite beside a running one: free ports for the four services
    and the offline server, metrics off. Merge it into the environ given to ``from_env``
    (with a COACH_DATA_DIR of its own: one supervisor per data directory)."""
    *ports, offline = free_ports(len(SERVICES) + 1, host)
    env = {f"COACH_{name.upper()}_ADDR": f"{host}:{port}"
           for name, port in zip(SERVICES, ports, strict=True)}
    env.update({f"COACH_{name.upper()}_METRICS_PORT": "0" for name in SERVICES})
    env["COACH_OFFLINE_OPENAI_ADDR"] = f"{host}:{offline}"
    return env


MAX_REPLICAS = 8


def parse_replicas(spec: str) -> dict[str, int]:
    """``router=2,threads=2,llm=2`` -> {"router": 2, ...}; services not named run once."""
    replicas: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, count = part.partition("=")
        name = name.strip()
        if not sep or name not in SERVICES or not count.strip().isdigit():
            raise ConfigError(f"COACH_REPLICAS={spec!r}: expected SERVICE=N[,SERVICE=N...] with "
                              f"SERVICE one of {', '.join(SERVICES)}")
        n = int(count)
        if not 1 <= n <= MAX_REPLICAS:
            raise ConfigError(f"COACH_REPLICAS={spec!r}: {name} needs 1 to {MAX_REPLICAS} replicas")
        replicas[name] = n
    return replicas


def parse_program(spec: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=COMMAND`` (COMMAND split like a shell would) -> (name, argv)."""
    name, sep, command = spec.partition("=")
    if not sep or not name.strip() or not command.strip():
        raise ConfigError(f"--program {spec!r}: expected NAME=COMMAND")
    return name.strip(), tuple(shlex.split(command))


def split_address(addr: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{addr!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def _check_address(name: str, addr: str) -> None:
    try:
        split_address(addr.removeprefix("dns:///"))
    except ConfigError:
        raise ConfigError(f"{name}={addr!r} is not host:port") from None
