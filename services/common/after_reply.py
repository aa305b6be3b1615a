"""Book-keeping that waits until the reply is on its way.

A handler's log lines, and work it does ahead for later requests, need not hold up its
reply: ``after_reply`` runs them on the event loop's next turn, which comes once the handler
has returned and gRPC has started sending the response. They still run before anything that
arrives later (the loop runs callbacks in the order they were scheduled), so the next
message of the same user sees their effects. Only work whose loss is harmless belongs here: what must be durable
before the reply (the router's journal) is done before it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def after_reply(callback: Callable[..., object], *args: Any) -> None:
    """``callback(*args)`` on the loop's next turn, in the current context (request id)."""
    asyncio.get_running_loop().call_soon(_run, callback, args)


def _run(callback: Callable[..., object], args: tuple[Any, ...]) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("book-keeping after a reply failed",
                      extra={"callback": getattr(callback, "__qualname__", repr(callback))})
