"""A graceful stop is bounded: a hook that never returns is logged and left behind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common import server as server_module
from services.common.server import CoachServer
from services.common.settings import Env, server_settings


async def test_a_hook_that_never_returns_does_not_hold_the_stop(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(server_module, "HOOK_MARGIN_S", 0.2)
    settings = server_settings(Env({"COACH_LEDGER_LISTEN": "127.0.0.1:0",
                                    "COACH_LEDGER_METRICS_PORT": "0"}), "ledger")
    never = asyncio.Event()
    ran: list[str] = []

    async def stuck() -> None:
        await never.wait()

    async def after() -> None:
        ran.append("after")

    server = CoachServer(settings, [], on_drain=[stuck], on_stop=[stuck, after])
    await server.start()
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(server.stop(0.1), 5)  # 3 x (0.1 + 0.2) s at most
    assert ran == ["after"]  # the hooks after a stuck one still run
    assert sum("did not finish" in r.getMessage() for r in caplog.records) == 2
