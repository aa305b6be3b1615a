"""A child of the suite's supervisor stops when the supervisor dies (Linux).

The supervisor (``services.suite``) starts each program with
``COACH_SUPERVISOR_PID`` set to its own pid; the program calls
``follow_supervisor()`` first thing, which asks the kernel for SIGTERM when its
parent dies (``prctl(PR_SET_PDEATHSIG)``; it survives ``exec``) and stops at once
if the supervisor is already gone. The program asks for it itself because nothing
may run between ``fork`` and ``exec`` in the supervisor's child: a ``preexec_fn``
runs Python in a forked copy of a process whose gRPC threads are busy, and it
crashed a starting child now and then (SIGSEGV in gRPC's event engine thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Mapping

SUPERVISOR_PID_ENV = "COACH_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def follow_supervisor(environ: Mapping[str, str] | None = None) -> bool:
    """Asks for SIGTERM when the supervisor dies; True when that is now in place."""
    raw = (os.environ if environ is None else environ).get(SUPERVISOR_PID_ENV, "")
    if not raw.isdigit() or not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) == 0:
            if os.getppid() != int(raw):  # the supervisor died before we asked
                os.kill(os.getpid(), signal.SIGTERM)
            return True
    return False
