"""Wiring: settings -> peers, classifier, prices -> servicer -> server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from coach.router.v1 import router_service_pb2, router_service_pb2_grpc

from services.common.clients import open_channel
from services.common.errors import CoachError
from services.common.pricing import PriceBook
from services.common.server import CoachServer, Registration
from services.router.answering import ChatPolicy, ChatService
from services.router.config import Settings
from services.router.decision import Router
from services.router.journal import AnswerJournal, JournalSettings
from services.router.peers import GrpcLedger, GrpcLlm, GrpcThreads
from services.router.servicer import RouterServicer
from services.router.user_cache import UserStateCache, follow_changes

log = logging.getLogger(__name__)


async def create_server(settings: Settings) -> CoachServer:
    router = Router.from_files(
        settings.data_dir, onboarding_messages=settings.onboarding_messages, policy=settings.policy
    )
    prices = PriceBook.load()
    prices.require(router.models())
    channels = [open_channel(peer) for peer in (settings.threads, settings.llm, settings.ledger)]
    threads_channel, llm, ledger = channels
    origin = f"router-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # The router in its claims: the same after a restart (one router per journal folder).
    holder = f"router-{socket.gethostname()}:{settings.journal_dir}"
    threads = GrpcThreads(threads_channel, origin=origin, holder=holder)
    journal = AnswerJournal(JournalSettings(settings.journal_dir, fsync=settings.journal_fsync,
                                            linger_s=settings.journal_linger_s,
                                            adopt_siblings=settings.journal_adopt_siblings),
                            threads)
    journal.open()
    cache = UserStateCache(max_users=settings.user_cache_size, recent_turns=settings.recent_turns)
    following = (asyncio.create_task(follow_changes(cache, threads.changes, origin))
                 if settings.user_cache_size else None)
    chat = ChatService(
        router=router,
        cache=cache,
        journal=journal,
        threads=threads,
        llm=GrpcLlm(llm),
        ledger=GrpcLedger(ledger),
        prices=prices,
        policy=ChatPolicy(
            baseline=settings.policy == "baseline",
            recent_turns=settings.recent_turns,
            daily_messages=settings.daily_messages,
            daily_budget_enabled=settings.daily_budget_enabled,
            default_deadline_s=settings.chat_deadline_s,
            claims=settings.request_claims,
            claim_margin_s=settings.claim_margin_s,
        ),
    )

    async def give_back_stale_claims() -> None:
        """Once the answers the journal held are stored, the claims an earlier process of
        this router left unanswered (it died mid-answer) are given back, so their retries
        are answered now rather than when the claims expire."""
        await journal.leftovers_stored()
        delay = 0.5
        while True:
            try:
                abandoned = await threads.abandon_stale_claims(chat.claim_token_prefix, 5.0)
            except CoachError as err:
                log.info("stale claims not given back yet", extra={"error": err.message})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if abandoned:
                log.warning("gave back the claims an earlier process left unanswered",
                            extra={"claims": abandoned})
            return

    stale = asyncio.create_task(give_back_stale_claims(), name="stale-claims")

    async def finish_answers() -> None:
        await chat.finish(settings.server.grace_seconds)

    async def close() -> None:
        stale.cancel()
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        await journal.close(timeout=settings.server.grace_seconds)
        for channel in channels:
            await channel.close()

    name = router_service_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
    return CoachServer(
        settings.server,
        [Registration(router_service_pb2_grpc.add_RouterServiceServicer_to_server,
                      RouterServicer(chat), name)],
        on_drain=[finish_answers],
        on_stop=[close],
    )
