"""What lets suites start side by side: ports no other run or outgoing connection takes, and
PostgreSQL's system user created once however many embedded servers start at once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.suite import ports, postgres

REPO = Path(__file__).resolve().parents[2]


def test_ports_are_below_the_ephemeral_range_free_and_never_twice() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    chosen = ports.free_ports(20) + ports.free_ports(20)
    assert len(set(chosen)) == 40
    assert all(1024 <= p < low for p in chosen)


def test_another_process_choosing_at_the_same_time_gets_other_ports() -> None:
    mine = set(ports.free_ports(50))
    theirs = set(json.loads(subprocess.run(
        [sys.executable, "-c",
         "import json; from services.suite.ports import free_ports; print(json.dumps(free_ports(50)))"],
        cwd=REPO, check=True, capture_output=True, text=True).stdout))
    assert len(theirs) == 50 and not mine & theirs


def test_the_system_user_is_created_once_when_servers_start_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exists = threading.Event()
    calls: list[list[str]] = []
    running = threading.Lock()
    missed_by: set[int] = set()  # starters that found the user missing
    all_missed = threading.Event()

    def getpwnam(name: str) -> Any:
        if not exists.is_set():
            missed_by.add(threading.get_ident())
            if len(missed_by) == 4:
                all_missed.set()
            raise KeyError(name)
        return SimpleNamespace(pw_name=name)

    def useradd(argv: list[str], **_: Any) -> Any:
        assert running.acquire(blocking=False), "two useradd at once"
        try:
            calls.append(argv)
            # Every starter is past its first look and racing for useradd meanwhile.
            assert all_missed.wait(10), "the starters did not all look"
            exists.set()
            return SimpleNamespace(returncode=0, stderr="")
        finally:
            running.release()

    monkeypatch.setattr(postgres.os, "geteuid", lambda: 0)
    monkeypatch.setattr(postgres.pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(postgres.subprocess, "run", useradd)
    starters = [threading.Thread(target=postgres.ensure_system_user, args=("coach-test-user",))
                for _ in range(4)]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join()
    assert calls == [["useradd", "-s", "/bin/bash", "coach-test-user"]]


def test_a_user_another_process_created_first_is_fine_and_a_real_failure_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(postgres.os, "geteuid", lambda: 0)
    monkeypatch.setattr(postgres.pwd, "getpwnam", lambda name: (_ for _ in ()).throw(KeyError(name)))
    monkeypatch.setattr(postgres.subprocess, "run",
                        lambda *a, **k: SimpleNamespace(returncode=9, stderr="already exists"))
    postgres.ensure_system_user("coach-test-user")
    monkeypatch.setattr(postgres.subprocess, "run",
                        lambda *a, **k: SimpleNamespace(returncode=1, stderr="no permission"))
    with pytest.raises(postgres.PostgresError, match="no permission"):
        postgres.ensure_system_user("coach-test-user")
