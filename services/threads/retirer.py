"""Deletes provider conversations a rotation archived, upstream, at least once.

A rotation swaps in a new provider conversation; the old one stays upstream with
the user's messages in it (the full history lives in ``threads.messages``, and
nothing reads the old one again). This task asks the llm service to delete each
archived conversation (``DeleteConversation``: one already gone counts as done)
and marks it ``upstream_deleted_at`` (or ``upstream_delete_error`` when the upstream
refuses for good, a 400: not tried again). A rotation wakes it; otherwise it looks
every ``interval_s``. While the llm service or the upstream is down it backs off
and the rows wait. Several replicas may delete the same conversation: harmless.

Off with ``COACH_DELETE_ROTATED_CONVERSATIONS=false`` (archived conversations
then stay upstream, as before).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.common.errors import CoachError
from services.common.metrics import CONVERSATIONS_DELETED
from services.common.repeated_pass import PassSettings, RepeatedPass
from services.threads.ports import ConversationProvider
from services.threads.repository import ThreadsRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetireSettings(PassSettings):
    batch_size: int = 50
    interval_s: float = 30.0
    # After a wake-up (a rotation), wait this long so the rotations meanwhile share a pass.
    linger_s: float = 1.0
    backoff_s: float = 0.5
    max_backoff_s: float = 60.0
    enabled: bool = True


class ConversationRetirer:
    def __init__(
        self, repository: ThreadsRepository, provider: ConversationProvider,
        settings: RetireSettings,
    ) -> None:
        self.repository = repository
        self.provider = provider
        self.settings = settings
        self._loop = RepeatedPass("conversation retirer", self.retire_pending, settings)

    def notify(self) -> None:
        """A conversation was just archived: delete it soon rather than at the next look."""
        self._loop.notify()

    def start(self) -> None:
        if self.settings.enabled:
            self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def retire_pending(self) -> int:
        """One pass over a batch; returns how many rows it settled (deleted, or refused for
        good)."""
        done = 0
        for conversation in await self.repository.conversations_to_retire(self.settings.batch_size):
            try:
                existed = await self.provider.delete_conversation(
                    conversation_id=conversation.provider_conversation_id, api=conversation.api)
            except CoachError as refused:
                if refused.code != "INVALID_ARGUMENT":
                    raise  # down, rate-limited, the operator's key: try again later
                # Refused for good (a 400): retrying cannot help, and must not hold up the rest.
                await self.repository.mark_delete_refused(conversation.id, str(refused))
                log.warning("the upstream refused to delete a rotated conversation",
                            extra={"conversation_id": conversation.provider_conversation_id,
                                   "error": str(refused)})
                done += 1
                continue
            await self.repository.mark_deleted_upstream(conversation.id)
            CONVERSATIONS_DELETED.inc()
            done += 1
            log.info("rotated conversation deleted upstream",
                     extra={"conversation_id": conversation.provider_conversation_id,
                            "api": conversation.api, "existed": existed})
        return done
