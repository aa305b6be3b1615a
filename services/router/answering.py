"""Answering one message: the router's flow, free of gRPC.

``ChatService.chat`` is the whole path of a message:

1. state: a request id the caller gave is claimed in threads first (BeginAnswer),
   before anything is decided: answered already on any router replica, the stored
   answer comes back (charged once, stored once); being answered by another replica,
   its answer is waited for. The user's state comes from the router's cache (checked
   against the store's message count that comes back with the claim, and kept exact
   by threads' change stream) or, on a miss, with the claim from threads;
2. decide (``Router.decide``): canned reply, cheap tier or stateful tier;
3. limits: messages per UTC day and spend per day, checked before any
   upstream call; crisis messages are answered even over a limit;
4. answer: canned reply, cheap tier (llm Complete) or stateful turn (threads
   RunStatefulTurn, which serializes the user's turns and prunes); any
   upstream failure becomes a fallback reply (ROUTE_FALLBACK) well within the
   caller's deadline;
5. store: every answer is stored exactly once (threads), which also queues
   its ledger record durably. Answers outside the stateful tier go through
   the router's journal (write-behind: durable locally before the reply,
   stored in threads in batches right after), so the canned path makes no
   synchronous call at all on a cache hit. A cheap-tier answer is kept even
   when the caller goes away while the llm answers (it is paid for); threads
   does the same for stateful turns.

The peers (threads, llm, ledger) are reached through the small protocols of
``ports.py``; ``peers.py`` implements them over gRPC and tests can fake them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from services.common.after_reply import after_reply
from services.common.errors import CoachError, ResourceExhausted
from services.common.exchange import Exchange, UserState
from services.common.metrics import CRISIS_EVENTS, ROUTES
from services.common.pricing import PriceBook
from services.common.unattended import Unattended
from services.common.usage import Charge
from services.common.vocabulary import Route, Turn
from services.router.decision import Decision, MessageContext, PriorTurn, Router
from services.router.ports import (
    AnswerClaim,
    AnswerStore,
    CompletionInput,
    LedgerPort,
    LlmPort,
    StateCache,
    StatefulTurnInput,
    ThreadsPort,
    UserContextIn,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ChatInput:
    user_id: str
    message: str
    request_id: str = ""
    context: UserContextIn = field(default_factory=UserContextIn)
    response_type: str = ""


@dataclass(frozen=True)
class ChatResult:
    answer: Exchange
    cost_usd_nanos: int
    replayed: bool = False



def _replay(answer: Exchange) -> UserState:
    """A state that only says: this request id is answered (``answer``)."""
    return UserState(message_count=0, recent_turns=(), existing=answer, messages_today=0,
                     last_canned_reply="")


class UpstreamFailure(Exception):
    """The upstream (or the llm service in front of it) could not answer in time."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


@dataclass(frozen=True)
class ChatPolicy:
    """Operator settings of the answering flow (from config)."""

    baseline: bool = False
    recent_turns: int = 6
    daily_messages: int | None = None
    daily_budget_enabled: bool = False
    default_deadline_s: float = 20.0
    # Time kept back from the caller's deadline to answer with a fallback and store it.
    fallback_reserve_s: float = 1.0
    # Claim each caller-given request id in threads before deciding (one answer per request
    # id across router replicas); off only for a single router, whose own cache and journal
    # know every answer it gave.
    claims: bool = True
    # A claim outlives the caller's deadline by this much: a dead router's claim then
    # expires and a retry takes over. Its journal must store its answers within it.
    claim_margin_s: float = 30.0


class ChatService:
    def __init__(
        self,
        router: Router,
        threads: ThreadsPort,
        llm: LlmPort,
        ledger: LedgerPort,
        prices: PriceBook,
        policy: ChatPolicy,
        cache: StateCache,
        journal: AnswerStore,
    ) -> None:
        self.router = router
        self.cache = cache
        self.journal = journal
        self.threads = threads
        self.llm = llm
        self.ledger = ledger
        self.prices = prices
        self.policy = policy
        self._rng = random.Random()
        # Cheap-tier answers being kept, some of them without a caller any more.
        self._unattended = Unattended("answer")
        # Claims being given back (the message was refused), in the background.
        self._abandoning: set[asyncio.Task[None]] = set()
        # Every claim token of this process starts with it: after a crash, the next process
        # gives back the claims with another prefix (threads' AbandonStaleClaims).
        self.claim_token_prefix = f"{uuid.uuid4().hex[:12]}."

    # -- decisions ------------------------------------------------------------------

    def context_for(
        self, context: UserContextIn, message_count: int, history: tuple[Turn, ...],
        last_canned_reply: str = "",
    ) -> MessageContext:
        return MessageContext(
            display_name=context.display_name,
            current_streak=context.current_streak,
            local_hour=context.local_hour,
            timezone=context.timezone,
            message_count=message_count,
            # The classifier reads turns as its own PriorTurn (same fields).
            history=tuple(PriorTurn(t.role, t.text) for t in history),
            last_canned_reply=last_canned_reply,
        )

    async def classify(
        self,
        user_id: str,
        message: str,
        context: UserContextIn,
        message_count: int | None,
        history: tuple[Turn, ...] | None,
        timeout: float,
    ) -> Decision:
        """Decides only: reads stored state for what the caller did not override."""
        last_canned = ""
        if user_id and (message_count is None or history is None):
            state = await self._user_state(user_id, "", time.monotonic() + timeout)
            message_count = state.message_count if message_count is None else message_count
            history = state.recent_turns if history is None else history
            last_canned = state.last_canned_reply
        ctx = self.context_for(context, message_count or 0, history or (), last_canned)
        return self.router.decide(message, ctx)

    # -- answering ------------------------------------------------------------------

    async def chat(self, request: ChatInput, deadline_s: float | None) -> ChatResult:
        started = time.monotonic()
        budget = deadline_s if deadline_s is not None else self.policy.default_deadline_s
        deadline = started + budget
        request_id = request.request_id or uuid.uuid4().hex
        self.journal.ensure_room()

        claim: AnswerClaim | None = None
        owed: tuple[Charge, ...] = ()
        if request.request_id and self.policy.claims:
            state, claim, owed = await self._begin(request.user_id, request_id, deadline)
        else:  # a request id made up here: nobody else can have answered it
            state = await self._user_state(request.user_id, request_id, deadline)
        if state.existing is not None:
            return ChatResult(state.existing, self.cost_of(state.existing), replayed=True)
        try:
            return await self._decide_and_answer(request, request_id, state, deadline, started,
                                                 owed)
        except CoachError:
            if claim is not None:  # refused (a daily limit, storage): the claim goes back
                self._abandon(claim)
            raise

    async def _decide_and_answer(
        self, request: ChatInput, request_id: str, state: UserState, deadline: float,
        started: float, owed: tuple[Charge, ...] = (),
    ) -> ChatResult:
        ctx = self.context_for(
            request.context, state.message_count, state.recent_turns, state.last_canned_reply
        )
        decision = self.router.decide(request.message, ctx)
        if decision.crisis:
            CRISIS_EVENTS.inc()
            log.warning("crisis message", extra={"user_id": request.user_id, "reason": decision.reason})
        else:
            await self._enforce_limits(request.user_id, state, deadline)

        if decision.route is Route.COMPLETIONS:
            # Paid for once asked: kept even when the caller goes away meanwhile.
            answer = await self._unattended.run(
                self._answer_and_keep(request, request_id, decision, state, deadline, started),
                user_id=request.user_id, request_id=request_id,
            )
        else:
            answer = await self._answer_and_keep(
                request, request_id, decision, state, deadline, started)
        cost = self.cost_of(answer)
        if answer.route is not Route.ASSISTANT:
            # Upkeep owed by the user and reserved by this request id's claim: the exchange
            # stored under it takes these charges, so the reply reports them. (A stateful
            # turn's exchange, stored by threads, carries them already.)
            cost += self.charges_cost(owed)
        after_reply(self._after_reply, request.user_id, answer, cost)
        return ChatResult(answer, cost)

    def _after_reply(self, user_id: str, answer: Exchange, cost: int) -> None:
        """Once the reply is on its way: the answer's log line, and the coach's turn read ahead
        for the user's next message (which will answer it)."""
        self._log_answer(user_id, answer, cost)
        if answer.coach_turn.strip():
            self.router.read_coach_turn(answer.coach_turn)

    @staticmethod
    def _log_answer(user_id: str, answer: Exchange, cost: int) -> None:
        # Every answer from the upstream is logged at INFO with its tokens and cost. A canned
        # reply (no upstream call, no cost) only at DEBUG: it is counted in
        # coach_routes_total and stored with its pattern by threads, and its line was a
        # large share of the router's CPU per canned reply (docs/decisions.md).
        level = logging.DEBUG if answer.route is Route.PATTERN else logging.INFO
        if log.isEnabledFor(level):
            usage = answer.answer_usage
            log.log(
                level,
                "answered",
                extra={
                    "user_id": user_id,
                    "route": answer.route.name,
                    "message_type": answer.message_type.name,
                    "model": answer.model,
                    "input_tokens": usage.input_tokens,
                    "cached_input_tokens": usage.cached_input_tokens,
                    "cache_write_tokens": usage.cache_write_tokens,
                    "output_tokens": usage.output_tokens,
                    "service_tier": usage.service_tier,
                    "truncated": usage.truncated,
                    "cost_usd_nanos": cost,
                    "latency_ms": answer.latency_ms,
                },
            )

    async def _answer_and_keep(
        self, request: ChatInput, request_id: str, decision: Decision, state: UserState,
        deadline: float, started: float,
    ) -> Exchange:
        """The answer, journaled (outside the stateful tier, which threads stores) and cached."""
        answer = await self._answer(request, request_id, decision, state, deadline)
        answer = replace(answer, latency_ms=int((time.monotonic() - started) * 1000))
        if answer.route is not Route.ASSISTANT:
            self.journal.append(answer)
        self.cache.record(answer)
        ROUTES.labels(answer.route.name, answer.message_type.name).inc()
        return answer

    async def finish(self, timeout_s: float) -> None:
        """Waits (at most ``timeout_s``) for answers still being kept: at shutdown."""
        await self._unattended.finish(timeout_s)

    async def _begin(
        self, user_id: str, request_id: str, deadline: float
    ) -> tuple[UserState, AnswerClaim | None, tuple[Charge, ...]]:
        """The user's state with this request id claimed, or the stored answer (``existing``)
        when any replica answered it already: asked of threads before anything is decided,
        whether the user is cached here or not."""
        cached = self.cache.get(user_id, request_id)
        if cached is not None and cached.existing is not None:
            return cached, None, ()  # answered here: the answer the store has (or will have)
        left = self._left(deadline)
        claim = AnswerClaim(user_id, request_id, self.claim_token_prefix + uuid.uuid4().hex,
                            lease_s=left + self.policy.claim_margin_s,
                            wait_s=max(left - self.policy.fallback_reserve_s, 0.0))
        if cached is None:
            # What threads returns must include this router's own answers still in the journal
            # (given up with time left to say UNAVAILABLE before the caller's deadline).
            await self.journal.flush_user(user_id, max(left - self.policy.fallback_reserve_s,
                                                       0.0))
            epoch = self.cache.epoch()
            begun = await self.threads.begin_answer(claim, self.policy.recent_turns,
                                                    self._left(deadline))
            if begun.existing is not None:
                return _replay(begun.existing), None, ()
            assert begun.state is not None
            self.cache.put(user_id, begun.state, epoch)
            return begun.state, claim, begun.owed
        begun = await self.threads.begin_answer(claim, 0, left)
        if begun.existing is not None:
            return _replay(begun.existing), None, ()
        if begun.message_count + self.journal.pending_for(user_id) == cached.message_count:
            return cached, claim, begun.owed
        # Another replica answered this user since it was cached (its change notice may
        # still be on its way): the cached state is stale.
        self.cache.drop(user_id)
        return await self._user_state(user_id, "", deadline), claim, begun.owed

    def _abandon(self, claim: AnswerClaim) -> None:
        async def abandon() -> None:
            try:
                await self.threads.abandon_answer(claim, 2.0)
            except CoachError as err:  # it expires by itself
                log.info("claim not given back", extra={"user_id": claim.user_id,
                                                         "error": err.message})
        task = asyncio.create_task(abandon())
        self._abandoning.add(task)
        task.add_done_callback(self._abandoning.discard)

    async def _user_state(self, user_id: str, request_id: str, deadline: float) -> UserState:
        cached = self.cache.get(user_id, request_id)
        if cached is not None:
            return cached
        # What threads returns must include this router's own answers still in the journal.
        await self.journal.flush_user(user_id, max(self._left(deadline)
                                                   - self.policy.fallback_reserve_s, 0.0))
        epoch = self.cache.epoch()
        state = await self.threads.user_state(
            user_id, request_id, self.policy.recent_turns, self._left(deadline)
        )
        self.cache.put(user_id, state, epoch)
        return state

    def charges_cost(self, charges: Sequence[Charge]) -> int:
        return sum(self.prices.cost_of(c.model, c.usage).nanos for c in charges)

    def cost_of(self, answer: Exchange) -> int:
        total = 0
        for charge in answer.charges:
            total += self.prices.cost_of(charge.model, charge.usage).nanos
        return total

    async def _enforce_limits(self, user_id: str, state: UserState, deadline: float) -> None:
        limit = self.policy.daily_messages
        if limit is not None and state.messages_today >= limit:
            raise ResourceExhausted(
                f"You've sent {limit} messages today, the daily limit. It resets at midnight UTC.",
                reason="DAILY_MESSAGE_LIMIT",
                metadata={"limit": str(limit)},
            )
        if self.policy.daily_budget_enabled:
            try:
                exceeded = await self.ledger.budget_exceeded(user_id, min(1.0, self._left(deadline)))
            except CoachError as err:  # the ledger being down must not stop coaching
                log.warning("budget check skipped", extra={"user_id": user_id, "error": err.message})
                exceeded = None
            if exceeded:
                raise ResourceExhausted(exceeded, reason="DAILY_BUDGET_EXCEEDED")

    async def _answer(
        self, request: ChatInput, request_id: str, decision: Decision, state: UserState, deadline: float
    ) -> Exchange:
        base = Exchange(
            request_id=request_id,
            user_id=request.user_id,
            user_text=request.message,
            coach_texts=(),
            route=decision.route,
            message_type=decision.message_type,
        )
        if decision.route is Route.PATTERN:
            return replace(base, coach_texts=(decision.canned_reply,), pattern=decision.pattern)
        upstream_timeout = self._left(deadline) - self.policy.fallback_reserve_s
        try:
            if upstream_timeout <= 0.05:
                raise UpstreamFailure("DEADLINE_TOO_SHORT")
            if decision.route is Route.COMPLETIONS:
                completion = await self.llm.complete(
                    CompletionInput(request_id, request.user_id, request.message,
                                    state.recent_turns, decision, request.context),
                    upstream_timeout,
                )
                return replace(
                    base,
                    coach_texts=(completion.text,),
                    model=completion.model,
                    charges=(Charge(completion.model, completion.usage),),
                )
            # The conversation must see the user's journaled answers before this turn.
            await self.journal.flush_user(request.user_id, upstream_timeout)
            return await self.threads.stateful_turn(
                StatefulTurnInput(request_id, request.user_id, request.message, decision,
                                  request.context, self.policy.baseline),
                upstream_timeout,
            )
        except UpstreamFailure as failure:
            log.warning(
                "upstream failed: answering with a fallback",
                extra={"user_id": request.user_id, "route": decision.route.name, "reason": failure.reason},
            )
            replies = self.router.fallback_replies(decision.crisis)
            return replace(base, route=Route.FALLBACK, coach_texts=(self._rng.choice(replies),))

    @staticmethod
    def _left(deadline: float, floor: float = 0.05) -> float:
        return max(deadline - time.monotonic(), floor)
