"""`make up`'s supervisor, run as a person runs it: a subprocess, signals, and what is left after.

Each run gets its own ports and a COACH_DATA_DIR under .coach/, so a `make up` running on the
default ports is not disturbed. The stand-in services (tests/suite/standin_service.py) serve
grpc.health.v1 through the real CoachServer; the same test runs on the real four services
once they exist.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from services.suite import Suite, SuiteError, SuiteSettings, free_port_env
from tests.helpers.polling import eventually_blocking
from tests.suite.helpers import (
    REPO_ROOT,
    SERVICES,
    SuiteRun,
    free_port,
    health,
    pid_alive,
    processes_mentioning,
    suite_run,
)

REAL_SERVICES = all(
    (REPO_ROOT / "services" / name / f).exists() for name in SERVICES for f in ("app.py", "__main__.py")
)


def standin_programs() -> dict[str, list[str]]:
    return {name: [sys.executable, "-m", "tests.suite.standin_service", name] for name in SERVICES}


def standin_args() -> list[str]:
    args = []
    for name, argv in standin_programs().items():
        args += ["--program", f"{name}={shlex.join(argv)}"]
    return args


@pytest.mark.parametrize(
    "which",
    [
        "standins",
        pytest.param("real", marks=pytest.mark.skipif(
            not REAL_SERVICES, reason="services/{router,llm,threads,ledger}/app.py not written yet")),
    ],
)
def test_up_serves_restarts_a_dead_service_and_stops_cleanly(which: str) -> None:
    with suite_run(standin_args() if which == "standins" else []) as run:
        status = run.wait_ready()
        for name, address in run.addresses.items():
            assert health(address) == "SERVING", name
        offline = run.env["COACH_OFFLINE_OPENAI_ADDR"]
        assert ("no OPENAI_API_KEY/OPENAI_BASE_URL: using the built-in offline OpenAI-compatible "
                f"server at http://{offline}/v1") in run.log()
        assert "ready: router " + run.addresses["router"] in run.log()
        if which == "standins":
            check_what_the_services_were_given(run)

        victim = status["services"]["threads"]["pid"]
        os.kill(victim, signal.SIGKILL)

        def restarted() -> int | None:
            svc = run.status().get("services", {}).get("threads", {})
            pid = svc.get("pid")
            return pid if svc.get("restarts") == 1 and pid not in (None, victim) else None

        new_pid = run.wait_for("threads restarted", restarted, timeout=60)
        run.seen_pids.add(new_pid)
        run.wait_for("threads SERVING again",
                     lambda: health(run.addresses["threads"]) == "SERVING", timeout=60)
        assert "threads exited (killed by SIGKILL); restarting" in run.log()
        assert all(health(a) == "SERVING" for a in run.addresses.values())

        assert run.terminate() == 0, run.log()
        assert "stopped cleanly" in run.log()
        assert [pid for pid in run.seen_pids if pid_alive(pid)] == []
        assert processes_mentioning(str(run.data_dir)) == []
        for address in run.addresses.values():
            assert health(address, timeout=0.5).startswith("UNREACHABLE")


def check_what_the_services_were_given(run: SuiteRun) -> None:
    seen = {name: json.loads((run.data_dir / f"standin-{name}.json").read_text())
            for name in SERVICES}
    offline = f"http://{run.env['COACH_OFFLINE_OPENAI_ADDR']}/v1"
    for name, env in seen.items():
        assert env["OPENAI_BASE_URL"] == offline, name
        assert env["OPENAI_API_KEY"], name
        assert env["COACH_DATA_DIR"] == str(run.data_dir)
        for peer in SERVICES:
            assert env[f"COACH_{peer.upper()}_ADDR"] == run.addresses[peer]
    url = seen["ledger"]["DATABASE_URL"]
    assert url.startswith("postgresql://") and "/coach?" in url
    assert asyncio.run(_fetch(url, "SELECT current_database()")) == "coach"


def test_a_second_up_reuses_the_database() -> None:
    data_dir = REPO_ROOT / ".coach" / f"test-suite-{uuid.uuid4().hex[:8]}"
    try:
        with suite_run(standin_args(), data_dir=data_dir) as run:
            run.wait_ready()
            url = json.loads((data_dir / "standin-ledger.json").read_text())["DATABASE_URL"]
            asyncio.run(_execute(url, "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('hi')"))
            assert "initialised" in run.log()
            assert run.terminate() == 0
        with suite_run(standin_args(), data_dir=data_dir) as run:
            run.wait_ready()
            assert "initialised" not in run.log()
            assert asyncio.run(_fetch(url, "SELECT note FROM kept")) == "hi"
            assert run.terminate() == 0
            assert processes_mentioning(str(data_dir)) == []
    finally:


        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_service_that_cannot_start_is_named_and_nothing_is_left(pg_admin_url: str) -> None:
    programs = standin_programs()
    programs["llm"] = [sys.executable, "-c", "import sys; sys.stderr.write('no key\\n'); sys.exit(3)"]
    args = []
    for name, argv in programs.items():
        args += ["--program", f"{name}={shlex.join(argv)}"]
    with suite_run(args, {"DATABASE_URL": pg_admin_url}) as run:
        assert run.proc is not None
        code = run.proc.wait(120)
        log = run.log()
        assert code == 1, log
        assert "cannot start the suite: llm did not become SERVING" in log
        assert "exit code 3" in log
        assert processes_mentioning(str(run.data_dir)) == []


def test_env_prints_exports_and_stops_cleanly() -> None:
    data_dir = REPO_ROOT / ".coach" / f"test-suite-{uuid.uuid4().hex[:8]}"
    offline = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COACH_", "OPENAI_"))
           and k != "DATABASE_URL"}
    env.update(COACH_DATA_DIR=str(data_dir), COACH_OFFLINE_OPENAI_ADDR=offline)
    proc = subprocess.Popen([sys.executable, "-m", "services.suite", "env"], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("export OPENAI_API_KEY="):
                break
        exports = dict(line[len("export "):].strip().split("=", 1) for line in lines
                       if line.startswith("export "))
        assert exports["OPENAI_BASE_URL"] == f"http://{offline}/v1", lines
        assert "postgresql://" in exports["DATABASE_URL"]
        assert (data_dir / "suite" / "env.sh").read_text().count("export ") == 3
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert processes_mentioning(str(data_dir)) == []
    finally:
        if proc.poll() is None:
            proc.kill()


        shutil.rmtree(data_dir, ignore_errors=True)


async def test_given_database_and_upstream_are_used_as_is(
    pg_url: str, offline_openai: object, tmp_path: Path
) -> None:
    base_url = str(offline_openai.base_url)
    data_dir = REPO_ROOT / ".coach" / f"test-suite-{uuid.uuid4().hex[:8]}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "COACH_DATA_DIR": str(data_dir),
        "DATABASE_URL": pg_url,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": "given",
        **free_port_env(),
    }
    settings = SuiteSettings.from_env(env, programs=standin_programs())
    try:
        async with Suite(settings, log_dir=tmp_path) as suite:
            assert suite.postgres is None and suite.offline is None
            assert suite.status()["state"] == "ready"
            seen = json.loads((data_dir / "standin-llm.json").read_text())
            assert seen["DATABASE_URL"] == pg_url
            assert seen["OPENAI_BASE_URL"] == base_url and seen["OPENAI_API_KEY"] == "given"
            pids = [c.pid for c in suite.services.values()]
        assert suite.status()["state"] == "stopped"
        assert not any(pid_alive(pid) for pid in pids if pid)
    finally:


        shutil.rmtree(data_dir, ignore_errors=True)


async def test_a_busy_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # Every other address free (the contract ports can be taken by anything on a shared
        # machine, even a client's ephemeral port): only the router's is busy here.
        env = {**free_port_env(), "COACH_DATA_DIR": str(tmp_path),
               "COACH_ROUTER_ADDR": f"127.0.0.1:{port}",
               "DATABASE_URL": "postgresql://unused/coach", "OPENAI_API_KEY": "x"}
        suite = Suite(SuiteSettings.from_env(env))
        with pytest.raises(SuiteError, match=f"127.0.0.1:{port} is already in use.*COACH_ROUTER_ADDR"):
            await suite.start()
        assert suite.services == {}


async def test_two_supervisors_cannot_share_a_data_dir(tmp_path: Path) -> None:
    env = {"COACH_DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://unused/coach",
           "OPENAI_API_KEY": "x"}
    first = Suite(SuiteSettings.from_env(env))
    first._take_lock()
    try:
        with pytest.raises(SuiteError, match="another suite is running with COACH_DATA_DIR"):
            await Suite(SuiteSettings.from_env(env)).start()
    finally:
        first._release_lock()


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetch(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


_FOLLOWER = """
import pathlib, sys, threading
from services.common.supervision import follow_supervisor
assert follow_supervisor()
pathlib.Path(sys.argv[1]).write_text("following")
threading.Event().wait()  # until the supervisor's end ends it
"""

_SUPERVISOR = """
import asyncio, os, sys
from services.suite.processes import ChildProcess

async def main():
    child = ChildProcess("follower", [sys.executable, "-c", sys.argv[1], sys.argv[2]], os.environ)
    print(await child.spawn(), flush=True)
    await asyncio.Event().wait()  # until the test kills it

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_stops_when_its_supervisor_is_killed(tmp_path: Path) -> None:
    """No code runs between fork and exec in the supervisor (a preexec_fn there crashed
    starting children now and then): our programs ask for the parent-death signal
    themselves, from COACH_SUPERVISOR_PID."""
    marker = tmp_path / "following"
    supervisor = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR, _FOLLOWER, str(marker)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    child = 0
    try:
        assert supervisor.stdout is not None
        child = int(supervisor.stdout.readline())
        eventually_blocking(marker.exists, timeout=20,
                            what="the child asking to follow its supervisor")
        supervisor.kill()  # SIGKILL: no clean-up of its own
        supervisor.wait()
        eventually_blocking(lambda: not pid_alive(child), timeout=20,
                            what="the child gone with its killed supervisor")
    finally:
        supervisor.kill()
        supervisor.wait()
        if child and pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_without_a_supervisor_nothing_is_asked() -> None:
    from services.common.supervision import follow_supervisor

    assert follow_supervisor({}) is False
    assert follow_supervisor({"COACH_SUPERVISOR_PID": "not a pid"}) is False


_FORK_UNDER_GRPC_LOAD = """
import asyncio, subprocess, sys
import services  # first, as in every entry point of the suite
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stub = health_pb2_grpc.HealthStub(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
    done = False

    async def load():
        while not done:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)

    tasks = [asyncio.create_task(load()) for _ in range(4)]
    codes = [(await asyncio.to_thread(subprocess.run, ["true"], user=sys.argv[1])).returncode
             for _ in range(40)]
    done = True
    await asyncio.gather(*tasks)
    print(sum(code != 0 for code in codes))

asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="running a command as another user needs root")
def test_a_process_of_the_suite_forks_safely_while_grpc_is_busy() -> None:
    """``subprocess`` with ``user=`` (pg_ctl as the database's owner) forks instead of
    vforking; with gRPC's fork support on, about one such child in three died of SIGSEGV
    before exec under gRPC load. ``import services`` turns it off for every process."""
    out = subprocess.run(
        [sys.executable, "-c", _FORK_UNDER_GRPC_LOAD, "nobody"], cwd=REPO_ROOT, check=True,
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"},
    )
    assert out.stdout.split()[-1] == "0", out.stderr[-2000:]
