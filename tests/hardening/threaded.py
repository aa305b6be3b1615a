"""The whole suite in-process on an event loop of its own, in a background thread.

For tests that are synchronous by nature (hypothesis drives a plain function) but must talk to
real servers: the suite keeps serving while the test's thread blocks on a synchronous gRPC call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from services.offline_openai import start_offline_openai
from tests.helpers.suite import Suite, start_suite, stop_suite

T = TypeVar("T")


class ThreadedSuite:
    def __init__(self, pg_url: str, extra: Mapping[str, str] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="suite-loop", daemon=True)
        self.thread.start()
        self.upstream: Any = self.run(start_offline_openai(host="127.0.0.1", port=0))
        self.suite: Suite = self.run(start_suite(pg_url, self.upstream, extra))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def address(self, name: str) -> str:
        return self.suite.services[name].address

    def close(self) -> None:
        try:
            self.run(stop_suite(self.suite))
            self.run(self.upstream.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
