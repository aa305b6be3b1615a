"""Builds the llm service: data files, one SDK client per tier, breakers, servicer."""

from __future__ import annotations

from coach.llm.v1 import llm_service_pb2, llm_service_pb2_grpc

from services.common.pricing import PriceBook
from services.common.server import CoachServer, Registration
from services.llm.assistants_backend import AssistantsBackend
from services.llm.caching import load_caching
from services.llm.cheap_tier import CheapTier
from services.llm.config import Settings, UpstreamSettings
from services.llm.persona import load_persona
from services.llm.prompt_prefix import baseline_prefix_tokens
from services.llm.resilience import CircuitBreaker, Clock, RetryPolicy, SystemClock, Upstream
from services.llm.responses_backend import ResponsesBackend
from services.llm.servicer import LlmServicer
from services.llm.stateful import StatefulApi, StatefulBackend, StatefulTier, TurnPlanner
from services.llm.tools import load_tools
from services.llm.upstream import (
    ChatCompletions,
    DirectChatCompletions,
    SdkChatCompletions,
    classify,
    create_client,
    prepare,
)
from services.llm.verbosity import load_verbosity

FULL_NAME = llm_service_pb2.DESCRIPTOR.services_by_name["LlmService"].full_name


def _upstream(settings: Settings, tier: UpstreamSettings, clock: Clock,
              name: str = "") -> Upstream:
    r = settings.resilience
    name = name or tier.name
    return Upstream(
        name,
        breaker=CircuitBreaker(name, failure_threshold=r.breaker_failures,
                               cooldown_s=r.breaker_cooldown_s, clock=clock),
        policy=RetryPolicy(max_attempts=r.max_attempts, base_s=r.retry_base_s, max_s=r.retry_max_s),
        classify=classify,
        call_timeout_s=r.call_timeout_s,
        clock=clock,
        max_in_flight=r.max_in_flight,
    )


async def create_server(settings: Settings) -> CoachServer:
    # The default models may be local (no price needed) but never shut down upstream.
    PriceBook.load().check_shutdowns(
        [settings.cheap.default_model, settings.stateful.default_model])
    persona = load_persona(settings.persona_file)
    catalog = load_tools(settings.tools_file)
    verbosity = load_verbosity(settings.verbosity_file)
    caching = load_caching(settings.caching_file)
    clock = SystemClock()
    timeout = settings.resilience.call_timeout_s
    cheap_client = create_client(settings.cheap, timeout)
    stateful_client = create_client(settings.stateful, timeout)
    for client in (cheap_client, stateful_client):
        prepare(client)
    chat: ChatCompletions = (
        DirectChatCompletions(cheap_client, settings.cheap.max_connections)
        if settings.cheap_http == "direct" else SdkChatCompletions(cheap_client)
    )
    cheap = CheapTier(
        chat,
        _upstream(settings, settings.cheap, clock),
        persona,
        history_turns=settings.history_turns,
        summary_max_tokens=settings.summary_max_tokens,
        default_model=settings.cheap.default_model,
        verbosity=verbosity,
        caching=caching,
        background=_upstream(settings, settings.cheap, clock, name=f"{settings.cheap.name}_background"),
    )
    stateful_upstream = _upstream(settings, settings.stateful, clock)
    planner = TurnPlanner(persona, catalog)
    backends: dict[StatefulApi, StatefulBackend] = {
        StatefulApi.RESPONSES: ResponsesBackend(
            stateful_client, stateful_upstream, planner,
            default_model=settings.stateful.default_model, verbosity=verbosity,
            caching=caching,
        ),
        StatefulApi.ASSISTANTS: AssistantsBackend(
            stateful_client,
            stateful_upstream,
            planner,
            default_model=settings.stateful.default_model,
            assistant_id=settings.assistant_id,
            assistant_name=settings.assistant_name,
            poll_s=settings.run_poll_s,
            poll_max_s=settings.run_poll_max_s,
            clock=clock,
        ),
    }
    stateful = StatefulTier(backends, StatefulApi(settings.stateful_api))
    servicer = LlmServicer(
        cheap,
        stateful,
        clock=clock,
        margin_s=settings.resilience.margin_s,
        budget_s=settings.resilience.budget_s,
        cheap_max_output_tokens=settings.cheap_max_output_tokens,
        stateful_max_output_tokens=settings.stateful_max_output_tokens,
        baseline_prefix_tokens=baseline_prefix_tokens(persona, catalog),
    )

    async def close_clients() -> None:
        await stateful.close()
        await chat.close()
        await cheap_client.close()
        await stateful_client.close()

    return CoachServer(
        settings.server,
        [Registration(llm_service_pb2_grpc.add_LlmServiceServicer_to_server, servicer, FULL_NAME)],
        on_stop=[close_clients],
    )
