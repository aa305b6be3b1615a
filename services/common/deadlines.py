"""The caller's deadline, carried to every call a request makes downstream.

The server interceptor records the incoming RPC's deadline in ``deadline_var``;
clients ask ``time_left(cap)`` for their timeout, so a chain router -> threads
-> llm never waits past what the first caller allowed.
"""

from __future__ import annotations

import contextvars
import time

deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def set_deadline(seconds_left: float | None) -> contextvars.Token[float | None]:
    value = None if seconds_left is None else time.monotonic() + seconds_left
    return deadline_var.set(value)


def time_left(cap: float, *, margin: float = 0.0) -> float:
    """``cap`` seconds, or less when the caller's deadline comes sooner (minus ``margin``)."""
    deadline = deadline_var.get()
    if deadline is None:
        return cap
    return max(min(cap, deadline - time.monotonic() - margin), 0.001)
