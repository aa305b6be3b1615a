"""The services run on uvloop's event loop unless told otherwise (COACH_EVENT_LOOP)."""

from __future__ import annotations

import asyncio
import builtins
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from services.common.errors import ConfigError
from services.common.server import run_loop
from services.common.settings import Env, server_settings


def _recorder() -> tuple[list[str], Callable[[], Coroutine[Any, Any, None]]]:
    """A list, and a ``main`` that adds the module of the loop it runs on to it."""
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    return seen, main


def test_uvloop_by_default_and_asyncio_when_asked() -> None:
    seen, main = _recorder()
    run_loop(main(), "uvloop")
    run_loop(main(), "asyncio")
    assert seen[0].startswith("uvloop") and seen[1].startswith("asyncio")
    assert server_settings(Env({}), "router").event_loop == "uvloop"
    assert server_settings(Env({"COACH_EVENT_LOOP": "asyncio"}), "router").event_loop == "asyncio"
    with pytest.raises(ConfigError):
        server_settings(Env({"COACH_EVENT_LOOP": "trio"}), "router")


def test_without_uvloop_installed_it_says_so_and_runs_on_asyncio(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "uvloop", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    seen, main = _recorder()
    run_loop(main(), "uvloop")
    assert seen[0].startswith("asyncio")
    assert "uvloop is not installed" in caplog.text
