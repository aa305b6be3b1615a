"""Deletes provider conversations we no longer use, upstream, at least once.

A rotation swaps in a new provider conversation; the old one stays upstream with
the user's messages in it (the full history lives in ``threads.messages``, and
nothing reads the old one again). This task asks the llm service to delete each
archived conversation (``DeleteConversation``: one already gone counts as done)
and marks it ``upstream_deleted_at`` (or ``upstream_delete_error`` when the upstream
refuses for good, a 400: not tried again). A rotation wakes it; otherwise it looks
every ``interval_s``. While the llm service or the upstream is down it backs off
and the rows wait. Several replicas may delete the same conversation: harmless.

It also deletes the conversations a rotation created and could not map (the mapping
changed meanwhile, the turn lease was lost, the transaction failed: see
``threads.orphaned_conversations``), once they are older than ``orphan_grace_s`` and
while no mapping names them.

Off with ``COACH_DELETE_ROTATED_CONVERSATIONS=false`` (archived and orphaned
conversations then stay upstream).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.common.errors import CoachError
from services.common.metrics import CONVERSATIONS_DELETED
from services.common.repeated_pass import PassSettings, RepeatedPass
from services.threads.ports import ConversationProvider
from services.threads.records import Conversation
from services.threads.repository import (
    ConversationConflict,
    RetiredConversation,
    RetiredStore,
    ThreadsRepository,
    TurnLease,
)

log = logging.getLogger(__name__)

# Noting an orphaned conversation must not hold up the failure being reported.
ORPHAN_NOTE_TIMEOUT_S = 2.0


async def note_orphan(store: RetiredStore, user_id: str, provider_id: str, api: str,
                      why: str) -> None:
    """A provider conversation a rotation created and could not map: remembered for the
    retirer to delete upstream later (it holds the user's summary and seed turns), when the
    database takes the note; logged either way."""
    note_error = ""
    try:
        await asyncio.wait_for(store.record_orphan(user_id, provider_id, api),
                               ORPHAN_NOTE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - best effort (the database may be what failed); logged
        note_error = repr(exc)
    log.warning(f"provider conversation orphaned: {why}",
                extra={"user_id": user_id, "conversation_id": provider_id,
                       "noted_for_deletion": not note_error, "note_error": note_error})


async def map_or_orphan(
    repository: ThreadsRepository, *, lease: TurnLease, old: Conversation | None,
    provider_id: str, api: str, summary: str, summarized_through: int, seen_through: int,
    seed_turns: int, lost: str,
) -> Conversation:
    """Maps the provider conversation a rotation created in place of ``old`` (under the
    user's ``lease``). On any failure it is noted as an orphan and the failure re-raised:
    ConversationConflict (``old`` is no longer the active one) with ``lost`` as the reason."""
    try:
        return await repository.conversations.replace_conversation(
            lease=lease, old=old, provider_conversation_id=provider_id, api=api,
            summary=summary, summarized_through=summarized_through,
            seen_through=seen_through, seed_turns=seed_turns)
    except ConversationConflict:
        await note_orphan(repository.retired, lease.user_id, provider_id, api, lost)
        raise
    except BaseException:
        await note_orphan(repository.retired, lease.user_id, provider_id, api,
                          "the mapping was not saved")
        raise


@dataclass(frozen=True)
class RetireSettings(PassSettings):
    batch_size: int = 50
    interval_s: float = 30.0
    # After a wake-up (a rotation), wait this long so the rotations meanwhile share a pass.
    linger_s: float = 1.0
    backoff_s: float = 0.5
    max_backoff_s: float = 60.0
    enabled: bool = True
    # An orphaned conversation (a rotation created it, its mapping was not saved) is deleted
    # once older than this: longer than the llm service remembers a CreateConversation
    # (10 minutes), so no retry of that rotation can be handed it again.
    orphan_grace_s: float = 3600.0
    # Deletions in flight at once. One at a time, a pass deletes about 3 conversations a
    # second at a 300 ms upstream, and 100 messages/s rotate 13-27 a second (27% stateful,
    # a rotation every turn or two): archived rows would pile up as long as the load lasts.
    max_in_flight: int = 16


class ConversationRetirer:
    def __init__(
        self, retired: RetiredStore, provider: ConversationProvider,
        settings: RetireSettings,
    ) -> None:
        self.retired = retired
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
        """One pass over a batch of each kind; returns how many rows it settled (deleted, or
        refused for good)."""
        retired = self.retired
        rotated = await retired.conversations_to_retire(self.settings.batch_size)
        done = await self._delete_all(rotated, "rotated", retired.mark_deleted_upstream,
                                      retired.mark_delete_refused)
        orphans = await retired.orphans_to_delete(self.settings.orphan_grace_s,
                                                  self.settings.batch_size)
        return done + await self._delete_all(orphans, "orphaned", retired.orphan_deleted,
                                             retired.orphan_delete_refused)

    async def _delete_all(
        self, conversations: list[RetiredConversation], kind: str,
        deleted: Callable[[int], Awaitable[None]], refused: Callable[[int, str], Awaitable[None]],
    ) -> int:
        """Deletes each upstream, ``max_in_flight`` at a time, and settles its row:
        ``deleted(id)`` or ``refused(id, why)``. While the upstream is down the pass raises
        (after settling the rows whose deletion went through) and the rest wait."""
        slots = asyncio.Semaphore(self.settings.max_in_flight)

        async def one(conversation: RetiredConversation) -> None:
            async with slots:
                refusal = await self._delete(conversation, kind)
            if refusal is None:
                await deleted(conversation.id)
            else:
                await refused(conversation.id, refusal)

        results = await asyncio.gather(*(one(c) for c in conversations), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return len(conversations)

    async def _delete(self, conversation: RetiredConversation, kind: str) -> str | None:
        """Deletes the conversation upstream: None once it is gone there, the reason when the
        upstream refuses for good (a 400: retrying cannot help, and must not hold up the
        rest). Raises while the upstream is down, rate-limited or the key is wrong: the pass
        backs off and the rows wait."""
        try:
            existed = await self.provider.delete_conversation(
                conversation_id=conversation.provider_conversation_id, api=conversation.api)
        except CoachError as refused:
            if refused.code != "INVALID_ARGUMENT":
                raise
            log.warning("the upstream refused to delete a conversation",
                        extra={"kind": kind, "conversation_id": conversation.provider_conversation_id,
                               "error": str(refused)})
            return str(refused)
        CONVERSATIONS_DELETED.inc()
        log.info("conversation deleted upstream",
                 extra={"kind": kind, "conversation_id": conversation.provider_conversation_id,
                        "api": conversation.api, "existed": existed})
        return None
