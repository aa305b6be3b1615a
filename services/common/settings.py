"""Settings parsed once from the environment into frozen dataclasses.

Each service's ``config.py`` builds its own ``Settings`` from these pieces; no
other module reads ``os.environ``. A bad value fails start-up with a message
naming the variable.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_ADDRESSES = {
    "router": "127.0.0.1:50051",
    "llm": "127.0.0.1:50052",
    "threads": "127.0.0.1:50053",
    "ledger": "127.0.0.1:50054",
}
DEFAULT_METRICS_PORTS = {"router": 9151, "llm": 9152, "threads": 9153, "ledger": 9154}


class Env:
    """Typed access to an environment mapping, with errors that name the variable."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def str(self, name: builtins.str, default: builtins.str = "") -> builtins.str:
        return self.environ.get(name, default).strip() or default

    def optional(self, name: builtins.str) -> builtins.str | None:
        value = self.environ.get(name, "").strip()
        return value or None

    def int(self, name: builtins.str, default: builtins.int | None, *, minimum: builtins.int | None = None) -> builtins.int | None:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = builtins.int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name}={value} must be at least {minimum}")
        return value

    def float(self, name: builtins.str, default: builtins.float, *, minimum: builtins.float = 0.0) -> builtins.float:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = builtins.float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if value < minimum:
            raise ConfigError(f"{name}={value} must be at least {minimum}")
        return value

    def choice(self, name: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]) -> builtins.str:
        value = self.str(name, default).lower()
        if value not in choices:
            raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
        return value

    def bool(self, name: builtins.str, default: builtins.bool = False) -> builtins.bool:
        raw = self.environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} must be true or false")


@dataclass(frozen=True)
class TlsSettings:
    """Certificate files; empty means plaintext (loopback, or a mesh doing TLS)."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    require_client_cert: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file and self.key_file)

    def read(self, path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None


@dataclass(frozen=True)
class PeerSettings:
    """How to reach another service of the suite."""

    address: str
    auth_token: str | None
    tls: TlsSettings


@dataclass(frozen=True)
class ServerSettings:
    service: str
    listen: str
    auth_token: str | None
    tls: TlsSettings
    metrics_port: int | None
    metrics_host: str
    grace_seconds: float
    max_message_bytes: int
    log_level: str
    # "uvloop" (default) or "asyncio": the event loop the service runs on
    event_loop: str = "uvloop"


def tls_settings(env: Env) -> TlsSettings:
    tls = TlsSettings(
        cert_file=env.optional("COACH_TLS_CERT_FILE"),
        key_file=env.optional("COACH_TLS_KEY_FILE"),
        ca_file=env.optional("COACH_TLS_CA_FILE"),
        require_client_cert=env.bool("COACH_TLS_REQUIRE_CLIENT_CERT"),
    )
    for path in (tls.cert_file, tls.key_file, tls.ca_file):
        if path and not Path(path).is_file():
            raise ConfigError(f"TLS file {path} does not exist")
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("COACH_TLS_CERT_FILE and COACH_TLS_KEY_FILE go together")
    if tls.require_client_cert and not tls.ca_file:
        raise ConfigError("COACH_TLS_REQUIRE_CLIENT_CERT needs COACH_TLS_CA_FILE")
    return tls


def peer_address(env: Env, service: str) -> str:
    return env.str(f"COACH_{service.upper()}_ADDR", DEFAULT_ADDRESSES[service])


def peer_settings(env: Env, service: str) -> PeerSettings:
    return PeerSettings(
        address=peer_address(env, service),
        auth_token=env.optional("COACH_AUTH_TOKEN"),
        tls=tls_settings(env),
    )


def server_settings(env: Env, service: str) -> ServerSettings:
    """Where ``service`` listens: COACH_<SERVICE>_LISTEN, else its peer address."""
    metrics_default = DEFAULT_METRICS_PORTS[service]
    metrics_port = env.int(f"COACH_{service.upper()}_METRICS_PORT", metrics_default, minimum=0)
    return ServerSettings(
        service=service,
        listen=env.str(f"COACH_{service.upper()}_LISTEN", peer_address(env, service)),
        auth_token=env.optional("COACH_AUTH_TOKEN"),
        tls=tls_settings(env),
        metrics_port=metrics_port or None,
        metrics_host=env.str("COACH_METRICS_HOST", "127.0.0.1"),
        grace_seconds=env.float("COACH_SHUTDOWN_GRACE_SECONDS", 10.0),
        max_message_bytes=env.int("COACH_MAX_MESSAGE_BYTES", 64 * 1024, minimum=1024) or 65536,
        log_level=env.str("COACH_LOG_LEVEL", "INFO"),
        event_loop=env.choice("COACH_EVENT_LOOP", "uvloop", ("uvloop", "asyncio")),
    )


def data_dir(env: Env) -> Path:
    return Path(env.str("COACH_DATA_DIR", str(REPO_ROOT / ".coach"))).resolve()


def database_url(env: Env) -> str:
    """DATABASE_URL, else the embedded server's socket under COACH_DATA_DIR."""
    url = env.optional("DATABASE_URL")
    if url:
        return url
    raise ConfigError(
        "DATABASE_URL is not set: run the suite with `make up` (which starts an embedded "
        "PostgreSQL) or point DATABASE_URL at a PostgreSQL server"
    )
