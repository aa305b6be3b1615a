"""No service reaches into another: each imports only its own package and services.common,
and opens no file under another service's folder. What one service needs of another
travels through that service's gRPC contract."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
SERVICES = sorted(p.name for p in SERVICES_DIR.iterdir()
                  if p.is_dir() and (p / "__init__.py").exists() and p.name != "common")


def _imported_services(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "services" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_a_service_imports_only_its_own_package_and_common() -> None:
    for service in SERVICES:
        for module in (SERVICES_DIR / service).rglob("*.py"):
            others = _imported_services(module.read_text()) - {service, "common"}
            assert not others, f"{module.relative_to(SERVICES_DIR)} imports services.{others}"


def test_common_imports_no_service() -> None:
    for module in (SERVICES_DIR / "common").rglob("*.py"):
        assert _imported_services(module.read_text()) <= {"common"}, module


def test_no_service_builds_a_path_into_another() -> None:
    for service in SERVICES:
        others = "|".join(s for s in SERVICES if s != service)
        reach = re.compile(rf"""["']services["']\s*/\s*["']({others})["']|services/({others})/""")
        for module in (SERVICES_DIR / service).rglob("*.py"):
            match = reach.search(module.read_text())
            assert match is None, f"{module.relative_to(SERVICES_DIR)}: {match and match[0]}"
