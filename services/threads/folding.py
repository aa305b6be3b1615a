"""Folding old messages into the running summary after the reply, at the background tier.

A rotation seeds a new provider conversation with the summary and the user's last
``keep_messages`` messages; everything older must be in the summary by then. Done inside
the turn, that Summarize call sits on the reply's path at the default price. Messages
that have left the window never change, so they can be folded in earlier, after a reply,
with nobody waiting: the llm service sends such a call (``background``) at its background
service tier (flex: half price, slower, may be refused for capacity and is then retried
like any 429). The rotation then finds the summary up to date and calls nothing, or only
for what was left.

Nothing here is needed for correctness: a fold that fails, loses a race or is lost with
its process leaves the messages to the rotation, which folds them as before. What it
must never do is fold the same messages twice: a marker on the conversation row
(``folding_until``, taken in one statement and expiring by itself) lets one fold at a
time run per conversation across every threads replica, and the summary is saved only if
``summarized_through`` is still what the fold started from. A fold that paid and then lost
to a rotation keeps its charge (owed by the user's next stored exchange, like all upkeep).

Rotating ahead (``PruneSettings.rotate_ahead``): once a fold has brought the summary up to
the window, the conversation the next rotation would make (summary plus the last
``keep_messages``) is created now, off any reply's path, and swapped in under the user's
turn lease, taken only for that one transaction and never waited for. A turn holding the
lease, or another rotation first, leaves the new conversation orphaned (noted for the
retirer, which deletes it upstream) and the user's next turn rotates as before. Messages
stored after the seed are simply unseen by the new conversation: the next turn carries
them, as it carries canned and cheap exchanges.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from services.common.usage import Charge
from services.threads.ports import ConversationProvider
from services.threads.pruning import PruneSettings
from services.threads.records import Conversation, HistoryMessage
from services.threads.repository import ConversationConflict, ThreadsRepository, TurnLease
from services.threads.retirer import map_or_orphan, note_orphan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldSettings:
    enabled: bool = False
    # Fold only once at least this many messages have left the window (one Summarize call
    # each time; 2 = one exchange).
    min_messages: int = 2
    # Folds (and rotations ahead) running at once in this process. They wait on the upstream,
    # not the CPU: each holds a Summarize and a new conversation, 0.6 s at a 300 ms upstream,
    # and with the window rule about every stateful turn brings one, so 100 messages/s (30
    # stateful turns/s) keep ~20 in flight. At 4 they fell behind and turns met the
    # backstop on their own path (the open loop, 2026-12-07).
    max_in_flight: int = 64
    # How long a fold may hold its conversation's marker (a flex call can be slow).
    marker_s: float = 120.0
    # The user's turn lease, taken to swap in a conversation rotated ahead: one transaction.
    swap_lease_s: float = 10.0


class SummaryFolder:
    def __init__(self, repository: ThreadsRepository, provider: ConversationProvider, *,
                 prune: PruneSettings, summary_model: str, settings: FoldSettings,
                 api: str = "responses", on_rotated: Callable[[], None] | None = None) -> None:
        self.repository = repository
        self.provider = provider
        self.prune = prune
        self.summary_model = summary_model
        self.settings = settings
        # The stateful API new conversations are made on (the rotation ahead's).
        self.api = api
        # Called once a rotation ahead archived a conversation (the retirer deletes it).
        self.on_rotated = on_rotated
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._pending: dict[str, asyncio.Task[bool]] = {}

    def soon(self, user_id: str) -> None:
        """Folds ``user_id``'s old messages in the background (once per user at a time)."""
        if not self.settings.enabled or user_id in self._pending:
            return
        task = asyncio.create_task(self._guarded(user_id), name=f"fold:{user_id}")
        self._pending[user_id] = task
        task.add_done_callback(lambda _: self._pending.pop(user_id, None))

    async def finish(self, timeout_s: float) -> None:
        """At shutdown: waits (at most ``timeout_s``) for folds in flight, then cancels
        the rest (harmless: the next rotation folds what they did not)."""
        tasks = list(self._pending.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _guarded(self, user_id: str) -> bool:
        try:
            async with self._slots:
                return await self.fold(user_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the rotation folds it later; logged
            log.warning("background fold failed; the next rotation folds these messages",
                        extra={"user_id": user_id, "error": repr(exc)[:300]})
            return False

    async def fold(self, user_id: str) -> bool:
        """One fold of the oldest batch outside the window, then, with the summary up to the
        window, the rotation ahead; True when a summary was saved."""
        conversations = self.repository.conversations
        conversation = await conversations.active_conversation(user_id)
        if conversation is None:
            return False
        window = await self.repository.messages.recent_messages(user_id, self.prune.keep_messages)
        if len(window) < self.prune.keep_messages:
            return False
        boundary = window[0].id - 1  # what a rotation now would summarize through
        marked = await conversations.mark_folding(conversation.id, self.settings.marker_s)
        if marked is None:
            return False  # another fold holds it, or the conversation was rotated
        summary, summarized_through = marked
        saved = False
        try:
            older = await self.repository.messages.messages_between(
                user_id, summarized_through, boundary)
            if older and len(older) < self.settings.min_messages:
                return False
            if older:
                batch = older[: self.prune.summary_batch]
                request_id = f"fold:{conversation.id}:{batch[-1].id}"
                reply = await self.provider.summarize(
                    request_id=request_id,
                    user_id=user_id,
                    previous_summary=summary,
                    turns=[m.turn() for m in batch],
                    model=self.summary_model,
                    background=True,
                )
                saved = await conversations.save_fold(
                    user_id=user_id,
                    conversation_pk=conversation.id,
                    request_id=request_id,
                    summary=reply.summary,
                    from_through=summarized_through,
                    through=batch[-1].id,
                    charge=Charge(reply.model or self.summary_model, reply.usage, "summary"),
                )
                log.info("folded into the summary after the reply" if saved else
                         "a rotation folded these first; this fold's charge is kept",
                         extra={"user_id": user_id, "messages": len(batch),
                                "service_tier": reply.usage.service_tier,
                                "input_tokens": reply.usage.input_tokens})
                if not saved or len(batch) < len(older):
                    return saved  # the rest is the next reply's fold
                summary = reply.summary
        finally:
            if not saved:
                await conversations.unmark_folding(conversation.id)
        # The summary holds everything before the window now.
        if self.prune.rotate_ahead and conversation.held_messages > self.prune.keep_messages:
            await self._rotate_ahead(conversation, window, summary, boundary)
        return saved

    async def _rotate_ahead(self, old: Conversation, window: list[HistoryMessage],
                            summary: str, summarized_through: int) -> None:
        """Seeds the conversation the next rotation would make and swaps it in for ``old``,
        if no turn of the user is running and nothing rotated ``old`` meanwhile."""
        user_id = old.user_id
        provider_id = await self.provider.create_conversation(
            request_id=f"ahead:{old.id}:{window[-1].id}",
            user_id=user_id,
            api=self.api,
            summary=summary,
            seed_turns=[m.turn() for m in window],
        )
        conversations = self.repository.conversations
        lease = TurnLease(user_id, f"ahead:{secrets.token_hex(12)}")
        try:
            leased = await conversations.try_acquire_turn_lease(lease, self.settings.swap_lease_s)
        except BaseException:
            await note_orphan(self.repository.retired, user_id, provider_id, self.api,
                              "the mapping was not saved")
            raise
        if not leased:
            await note_orphan(self.repository.retired, user_id, provider_id, self.api,
                              "a turn of the user is running; it rotates itself if due")
            return
        try:
            new = await map_or_orphan(
                self.repository, lease=lease, old=old, provider_id=provider_id, api=self.api,
                summary=summary, summarized_through=summarized_through,
                seen_through=window[-1].id, seed_turns=len(window),
                lost="the conversation was rotated meanwhile")
        except ConversationConflict:
            return
        finally:
            try:
                await conversations.release_turn_lease(lease)
            except Exception as exc:  # noqa: BLE001 - it expires in swap_lease_s by itself
                log.warning("swap lease not released; it expires by itself",
                            extra={"user_id": user_id, "error": repr(exc)})
        log.info("conversation rotated ahead of the next turn", extra={
            "user_id": user_id, "conversation_id": provider_id,
            "previous_conversation_id": old.provider_conversation_id,
            "seed_turns": len(window), "summarized_through": summarized_through,
            "generation": new.generation})
        if self.on_rotated is not None:
            self.on_rotated()
