"""Choosing ports for services that will bind them a moment later.

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` comes from its ephemeral range,
the range every outgoing connection on the machine draws its source port from: between the
choice and the service binding it, a database or gRPC connection of anyone's can take it,
and the service fails to start (or, for a metrics port, serves no metrics). Ports are
therefore chosen below that range, checked free, never handed out twice by one process,
and held against other processes choosing the same way (one lock file per port, kept
until this process exits), so two test or bench runs on one machine never pick the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path

LOWEST, HIGHEST = 21000, 32000
_LOCK_DIR = Path(tempfile.gettempdir()) / "coach-ports"
_held: dict[int, int] = {}  # port -> the fd of its lock file, open for this process's life


def _below_ephemeral() -> tuple[int, int]:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return LOWEST, HIGHEST
    return (LOWEST, min(HIGHEST, low)) if low > LOWEST + 1000 else (1024, max(1025, low))


def _claim(port: int) -> bool:
    """Takes the port's lock file; False when another process holds it."""
    _LOCK_DIR.mkdir(exist_ok=True)
    fd = os.open(_LOCK_DIR / str(port), os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held[port] = fd
    return True


def _free_now(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` ports free right now that nobody else will be handed (see the module's doc)."""
    low, high = _below_ephemeral()
    rng = random.Random()
    ports: list[int] = []
    for _ in range(100 * n + 1000):
        if len(ports) == n:
            return ports
        port = rng.randrange(low, high)
        if port in _held or not _claim(port):
            continue
        if _free_now(host, port):
            ports.append(port)
        # else: held (never handed out by this process), and in use by someone: skip it
    raise RuntimeError(f"no {n} free ports between {low} and {high}")


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def release_all() -> None:
    """Lets other processes have the ports again (tests of this module)."""
    for fd in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()
