"""The files that ship the suite: one pinned, non-root image; compose and Kubernetes that wire
the four services the way the contract says, with health checks the services really answer."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import yaml

from services.common.server import CoachServer
from services.common.settings import Env, server_settings
from tests.suite.helpers import REPO_ROOT, SERVICES, free_port

PORTS = {"router": 50051, "llm": 50052, "threads": 50053, "ledger": 50054}


def test_one_dockerfile_pinned_and_non_root() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert bases and all(re.search(r":\d+\.\d+\.\d+-", b) for b in bases), bases
    user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0")), user
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".coach"} <= set(ignored)


def test_compose_runs_four_services_from_one_image_with_health_and_order() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert re.fullmatch(r"postgres:\d+\.\d+-\w+", services["postgres"]["image"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    images = {services[name]["image"] for name in SERVICES}
    assert len(images) == 1
    for name in SERVICES:
        svc = services[name]
        assert svc["command"] == ["python", "-m", f"services.{name}"]
        assert svc["healthcheck"]["test"] == [
            "CMD", "python", "-m", "services.suite", "healthcheck", f"127.0.0.1:{PORTS[name]}"]
        env = svc["environment"]
        assert env[f"COACH_{name.upper()}_LISTEN"] == f"0.0.0.0:{PORTS[name]}"
        for peer in SERVICES:
            # every replica of the peer (docker-compose --scale), round_robin
            assert env[f"COACH_{peer.upper()}_ADDR"] == f"dns:///{peer}:{PORTS[peer]}"
        # scalable: no fixed container name, no single host port
        assert "container_name" not in svc
        assert all("-" in str(p).split(":")[-2] for p in svc.get("ports", ())), svc.get("ports")
        for dep in svc.get("depends_on", {}).values():
            assert dep == {"condition": "service_healthy"}
    assert set(services["router"]["depends_on"]) == {"llm", "threads", "ledger"}
    assert services["llm"]["environment"]["OPENAI_API_KEY"] is None  # passed through from the host
    assert services["offline-openai"]["profiles"] == ["offline"]
    # router replicas on one volume: a journal folder each
    assert "{hostname}" in services["router"]["environment"]["COACH_ROUTER_JOURNAL_DIR"]


def test_k8s_base_renders_and_validates_offline() -> None:
    result = subprocess.run([sys.executable, "scripts/k8s_validate.py"], check=False,
                            cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid against the Kubernetes" in result.stdout


async def test_healthcheck_command_says_serving_or_not() -> None:
    port = free_port()
    settings = server_settings(Env({"COACH_ROUTER_LISTEN": f"127.0.0.1:{port}"}), "router")
    server = CoachServer(settings, [])
    await server.start()
    try:
        assert await _healthcheck(f"127.0.0.1:{port}") == (0, "")
        await server.health.enter_graceful_shutdown()
        code, err = await _healthcheck(f"127.0.0.1:{port}")
        assert code == 1 and "NOT_SERVING" in err
    finally:
        await server.stop(0)
    code, err = await _healthcheck(f"127.0.0.1:{port}")
    assert code == 1 and "UNREACHABLE" in err


async def _healthcheck(address: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.suite", "healthcheck", address, "--timeout", "2",
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()
