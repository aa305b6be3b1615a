"""The baseline policy's prompt prefix, as the llm service reports it.

Each stored answer carries what the baseline policy would have sent for it
(``baseline_tokens``): this prefix, the user's whole history, and the message. The prefix
(the coach persona with its tool guidance and every function definition) is what the llm
service sends first on every baseline call, so its size comes from the llm service
(``LlmService.GetPromptPrefix``), never from the llm's files.

``COACH_BASELINE_PREFIX_TOKENS`` fixes it. Otherwise threads asks at start, waiting a
little for the llm service to be up; if it is not, ``DEFAULT_PREFIX_TOKENS`` stands in and
threads keeps asking in the background until it answers. An llm service without the RPC
(UNIMPLEMENTED) leaves the default for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from services.common.errors import CoachError

log = logging.getLogger(__name__)

# Persona + three function definitions, while the llm service has not said.
DEFAULT_PREFIX_TOKENS = 900
# How long start-up waits for the llm service's answer before going on with the default.
FIRST_WAIT_S = 5.0

# Asks the llm service: ``ask(timeout_s)`` -> tokens; raises CoachError when it cannot.
Ask = Callable[[float], Awaitable[int]]


class BaselinePrefix:
    def __init__(self, ask: Ask, *, configured: int | None = None,
                 retry_first_s: float = 1.0, retry_max_s: float = 30.0) -> None:
        self._ask = ask
        self._tokens = DEFAULT_PREFIX_TOKENS if configured is None else configured
        self._known = configured is not None
        self._retry_first_s = retry_first_s
        self._retry_max_s = retry_max_s
        self._task: asyncio.Task[None] | None = None

    def tokens(self) -> int:
        """The prefix size for an answer stored now."""
        return self._tokens

    @property
    def known(self) -> bool:
        """Whether the size is the configured or the llm service's (not the default)."""
        return self._known

    async def start(self, first_wait_s: float = FIRST_WAIT_S) -> None:
        """Asks once (up to ``first_wait_s``); on failure keeps asking in the background."""
        if self._known or await self._learn(first_wait_s):
            return
        self._task = asyncio.create_task(self._keep_asking(), name="baseline-prefix")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _keep_asking(self) -> None:
        delay = self._retry_first_s
        while not self._known:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)
            if await self._learn(self._retry_max_s):
                return

    async def _learn(self, timeout_s: float) -> bool:
        """True once the size is settled: learnt, or never to be learnt (UNIMPLEMENTED)."""
        try:
            self._tokens = await self._ask(timeout_s)
        except CoachError as err:
            if err.code == "UNIMPLEMENTED":
                log.warning("the llm service does not report its prompt prefix; baseline "
                            "estimates use the default", extra={"tokens": self._tokens})
                self._known = True
                return True
            log.warning("the llm service did not report its prompt prefix yet; baseline "
                        "estimates use the default meanwhile",
                        extra={"tokens": self._tokens, "error": err.message})
            return False
        self._known = True
        log.info("baseline prompt prefix", extra={"tokens": self._tokens})
        return True
