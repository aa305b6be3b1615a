"""LlmService over gRPC, the real openai SDK over HTTP to the offline server."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from coach.llm.v1 import llm_service_pb2 as pb

from services.common.tokens import count_tokens
from services.llm.config import DATA_DIR
from services.llm.tools import ToolCatalog, load_tools
from services.offline_openai.tokens import Segment, TokenCounter
from tests.helpers.llm_turns import (
    CHECK_IN,
    GOAL,
    PERSONA,
    SAM,
    gen,
    goal_request,
    goal_turn,
    uid,
)
from tests.helpers.services import Llm, running_llm

pytestmark = pytest.mark.usefixtures("healthy_upstream")



def user(text: str) -> pb.ChatTurn:
    return pb.ChatTurn(role=pb.TURN_ROLE_USER, text=text)


def coach(text: str) -> pb.ChatTurn:
    return pb.ChatTurn(role=pb.TURN_ROLE_COACH, text=text)


class Seen:
    """What the offline server counted between two points."""

    def __init__(self, upstream: Any) -> None:
        self.upstream = upstream
        self.before = upstream.stats.snapshot()

    def delta(self, key: str) -> int:
        return int(self.upstream.stats.snapshot()[key]) - int(self.before[key])

    def requests(self, endpoint: str) -> int:
        now = self.upstream.stats.snapshot()["requests"].get(endpoint, 0)
        return int(now) - int(self.before["requests"].get(endpoint, 0))


# ---- cheap tier ------------------------------------------------------------------------


async def test_complete_answers_with_the_exact_usage_and_no_tools(llm: Llm, offline_openai: Any) -> None:
    seen = Seen(offline_openai)
    message = "My goal is to read 20 pages a day"
    reply = await llm.stub.Complete(
        pb.CompleteRequest(user_id=uid(), message=message, audience=SAM,
                           generation=gen(GOAL, "gpt-5.4-mini", 60)),
        timeout=5,
    )
    assert reply.text and reply.model == "gpt-5.4-mini"
    # Exactly what the upstream billed, in one call.
    assert seen.delta("model_calls") == 1
    assert reply.usage.input_tokens == seen.delta("input_tokens")
    assert reply.usage.output_tokens == seen.delta("output_tokens")
    assert reply.usage.cached_input_tokens == seen.delta("cached_tokens")
    # The prompt is persona + context line + message: not one token of tool definitions,
    # even on a goal-setting message (the offline model would have called save_goal).
    expected = TokenCounter().prompt_tokens([
        Segment("system", PERSONA.coach),
        Segment("system", "Context: name Sam; current streak 5 days."),
        Segment("user", message),
    ])
    assert reply.usage.input_tokens == len(expected)


async def test_complete_sends_only_the_recent_window(llm: Llm) -> None:
    history = [t for i in range(10) for t in (user(f"message number {i}"), coach(f"reply number {i}"))]
    reply = await llm.stub.Complete(
        pb.CompleteRequest(user_id=uid(), message="ok", history=history, audience=pb.Audience(),
                           generation=gen(CHECK_IN, "gpt-5.4-mini")),
        timeout=5,
    )
    window = [Segment("user" if t.role == pb.TURN_ROLE_USER else "assistant", t.text)
              for t in history[-6:]]
    expected = TokenCounter().prompt_tokens([
        Segment("system", PERSONA.coach),
        Segment("system", "Context: current streak 0 days."),
        *window,
        Segment("user", "ok"),
    ])
    assert reply.usage.input_tokens == len(expected)


async def test_bad_input_is_invalid_argument_and_calls_nothing(llm: Llm, offline_openai: Any) -> None:
    seen = Seen(offline_openai)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await llm.stub.Complete(pb.CompleteRequest(user_id="u", message="   "), timeout=5)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "message" in (failed.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await llm.stub.AppendTurns(
            pb.AppendTurnsRequest(conversation_id="conv_x", turns=[user("ok"), coach(" ")]), timeout=5
        )
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "turns[1].text" in (failed.value.details() or "")
    nothing = await llm.stub.AppendTurns(pb.AppendTurnsRequest(conversation_id="conv_x"), timeout=5)
    assert nothing.appended == 0
    assert seen.delta("total_requests") == 0


async def test_summarize_folds_only_new_turns_with_usage(llm: Llm, offline_openai: Any) -> None:
    seen = Seen(offline_openai)
    reply = await llm.stub.Summarize(
        pb.SummarizeRequest(user_id=uid(), previous_summary="User wants to run a 10k by June.",
                            turns=[user("I ran 5k this morning"), coach("Good. Same time tomorrow?")],
                            model="gpt-5.4-mini"),
        timeout=5,
    )
    assert reply.summary and reply.model == "gpt-5.4-mini"
    assert "I ran 5k this morning" in reply.summary  # the offline model lists user lines
    assert reply.usage.input_tokens == seen.delta("input_tokens") > 0
    assert reply.usage.output_tokens == seen.delta("output_tokens") <= 300
    # Nothing new: no upstream call, the summary stays.
    seen = Seen(offline_openai)
    same = await llm.stub.Summarize(
        pb.SummarizeRequest(user_id="u", previous_summary="As before."), timeout=5
    )
    assert same.summary == "As before." and seen.delta("total_requests") == 0


# ---- stateful tier: Responses + Conversations ------------------------------------------


async def test_conversation_is_seeded_and_appended(
    llm: Llm, upstream_client: openai.AsyncOpenAI
) -> None:
    created = await llm.stub.CreateConversation(
        pb.CreateConversationRequest(user_id=uid(), summary="User is training for a 10k.",
                                     seed_turns=[user("hey"), coach("What's the plan today?")]),
        timeout=5,
    )
    assert created.api == pb.STATEFUL_API_RESPONSES
    assert created.conversation_id.startswith("conv_")
    appended = await llm.stub.AppendTurns(
        pb.AppendTurnsRequest(conversation_id=created.conversation_id,
                              turns=[user("done with my run"), coach("Nice. Keep going")]),
        timeout=5,
    )
    assert appended.appended == 2
    items = await upstream_client.conversations.items.list(created.conversation_id, order="asc")
    roles = [(item.role, item.content[0].text) for item in items.data]  # type: ignore[union-attr]
    assert roles[0][0] == "developer" and "User is training for a 10k." in roles[0][1]
    assert roles[1:] == [("user", "hey"), ("assistant", "What's the plan today?"),
                         ("user", "done with my run"), ("assistant", "Nice. Keep going")]


async def test_unseen_turns_ride_with_the_turn_in_one_upstream_call(
    llm: Llm, upstream_client: openai.AsyncOpenAI, offline_openai: Any
) -> None:
    created = await llm.stub.CreateConversation(
        pb.CreateConversationRequest(user_id=uid(), seed_turns=[user("hey"), coach("Plan?")]),
        timeout=5)
    seen = Seen(offline_openai)
    reply = await llm.stub.StatefulTurn(pb.StatefulTurnRequest(
        user_id=uid(), conversation_id=created.conversation_id, message="what next?",
        audience=SAM, generation=gen(CHECK_IN),
        prior_turns=[user("done with my run"), coach("Nice. Keep going")]), timeout=5)
    assert seen.requests("POST /v1/responses") == 1
    assert seen.requests("POST /v1/conversations/{conversation_id}/items") == 0
    items = await upstream_client.conversations.items.list(created.conversation_id, order="asc")
    said = [(i.role, i.content[0].text) for i in items.data if i.role != "developer"]  # type: ignore[union-attr]
    assert said == [("user", "hey"), ("assistant", "Plan?"), ("user", "done with my run"),
                    ("assistant", "Nice. Keep going"), ("user", "what next?"),
                    ("assistant", reply.texts[0])]


async def item_kinds(client: openai.AsyncOpenAI, conversation_id: str) -> list[str]:
    items = await client.conversations.items.list(conversation_id, order="asc")
    return [item.type if item.type != "message" else item.role for item in items.data]  # type: ignore[union-attr]


async def test_goal_turn_replies_with_the_call_in_one_model_call(
    llm: Llm, offline_openai: Any, upstream_client: openai.AsyncOpenAI
) -> None:
    user_id = uid()
    seen = Seen(offline_openai)
    conversation_id, reply = await goal_turn(llm, user_id)
    # The reply came with the call (the tool guidance asks for it; save_goal only records):
    # the output is added to the conversation, the model is not asked again.
    assert seen.requests("POST /v1/responses") == 1
    assert seen.requests("POST /v1/conversations/{conversation_id}/items") == 1
    assert reply.usage.input_tokens == seen.delta("input_tokens")
    assert reply.usage.output_tokens == seen.delta("output_tokens")
    final = await upstream_client.responses.retrieve(reply.response_id)
    assert [t.name for t in final.tools] == ["save_goal"]  # type: ignore[union-attr]
    assert final.instructions == f"{PERSONA.coach}\n\n{PERSONA.tools}"  # tool guidance: tool turns only
    assert final.prompt_cache_key and user_id not in final.prompt_cache_key
    assert await item_kinds(upstream_client, conversation_id) == [
        "developer", "user", "assistant", "function_call", "function_call_output"]
    # No call is left unanswered: the next turn goes through.
    nxt = await llm.stub.StatefulTurn(
        pb.StatefulTurnRequest(user_id=user_id, conversation_id=conversation_id,
                               message="first run is tomorrow at 7", audience=SAM,
                               generation=gen(CHECK_IN)),
        timeout=5,
    )
    assert nxt.texts and not nxt.tool_calls


async def test_a_call_without_a_reply_gets_a_follow_up(
    offline_openai: Any, upstream_client: openai.AsyncOpenAI, tmp_path: Path
) -> None:
    """A model that only calls (here: tool guidance without the same-response request) is
    asked again with the output; usage is the sum of both calls."""
    text = (DATA_DIR / "persona.yaml").read_text(encoding="utf-8")
    assert "same response" in text
    persona = tmp_path / "persona.yaml"
    persona.write_text(text.replace("in the same response", "after the call"), encoding="utf-8")
    async with running_llm(offline_openai, {"COACH_LLM_PERSONA_FILE": str(persona)}) as llm:
        seen = Seen(offline_openai)
        conversation_id, reply = await goal_turn(llm, uid())
    assert seen.requests("POST /v1/responses") == 2
    assert seen.requests("POST /v1/conversations/{conversation_id}/items") == 0
    assert reply.usage.input_tokens == seen.delta("input_tokens")
    assert reply.usage.output_tokens == seen.delta("output_tokens")
    assert await item_kinds(upstream_client, conversation_id) == [
        "developer", "user", "function_call", "function_call_output", "assistant"]


async def test_other_turns_carry_no_tools_and_a_cache_key_per_user(
    llm: Llm, upstream_client: openai.AsyncOpenAI
) -> None:
    keys: dict[str, set[str]] = {}
    for user_id in (uid(), uid()):
        conv = await llm.stub.CreateConversation(pb.CreateConversationRequest(user_id=user_id),
                                                 timeout=5)
        for text in ("I want to get better at mornings", "mostly before work"):
            reply = await llm.stub.StatefulTurn(
                pb.StatefulTurnRequest(user_id=user_id, conversation_id=conv.conversation_id,
                                       message=text, audience=SAM, generation=gen(CHECK_IN)),
                timeout=5,
            )
            assert not reply.tool_calls
            stored = await upstream_client.responses.retrieve(reply.response_id)
            assert stored.tools == []
            assert stored.instructions == PERSONA.coach  # no tool guidance without tools
            assert stored.prompt_cache_retention == "24h"  # type: ignore[attr-defined]
            assert stored.prompt_cache_key is not None and user_id not in stored.prompt_cache_key
            keys.setdefault(user_id, set()).add(stored.prompt_cache_key)
    # one key per user (their conversation prefix stays on one cache), stable across turns
    assert [len(k) for k in keys.values()] == [1, 1] and len(set.union(*keys.values())) == 2


async def test_baseline_sends_every_tool(llm: Llm, upstream_client: openai.AsyncOpenAI) -> None:
    user_id = uid()
    conv = await llm.stub.CreateConversation(pb.CreateConversationRequest(user_id=user_id), timeout=5)
    reply = await llm.stub.StatefulTurn(
        pb.StatefulTurnRequest(user_id=user_id, conversation_id=conv.conversation_id,
                               message="hey", audience=SAM, generation=gen(CHECK_IN),
                               all_tools=True),
        timeout=5,
    )
    stored = await upstream_client.responses.retrieve(reply.response_id)
    assert sorted(t.name for t in stored.tools) == ["get_progress", "log_commitment", "save_goal"]  # type: ignore[union-attr]


async def test_context_line_goes_in_once_and_crisis_guidance_stays_out_of_instructions(
    llm: Llm, upstream_client: openai.AsyncOpenAI
) -> None:
    user_id = uid()
    conv = await llm.stub.CreateConversation(pb.CreateConversationRequest(user_id=user_id), timeout=5)

    async def turn(message: str, audience: pb.Audience, kind: str = CHECK_IN) -> pb.StatefulTurnResponse:
        response: pb.StatefulTurnResponse = await llm.stub.StatefulTurn(
            pb.StatefulTurnRequest(user_id=user_id, conversation_id=conv.conversation_id,
                                   message=message, audience=audience, generation=gen(kind)),
            timeout=5,
        )
        return response

    await turn("hey", SAM)
    await turn("did my workout", SAM)
    await turn("skipped today", pb.Audience(display_name="Sam", current_streak=0))
    crisis = await turn("I don't want to be here anymore", SAM, "MESSAGE_TYPE_CRISIS")
    items = await upstream_client.conversations.items.list(conv.conversation_id, order="asc")
    developer = [i.content[0].text for i in items.data if getattr(i, "role", "") == "developer"]  # type: ignore[union-attr]
    assert developer[:2] == ["Context: name Sam; current streak 5 days.",
                             "Context: name Sam; current streak 0 days."]
    assert developer[-1] == PERSONA.safety  # crisis guidance travels with the turn
    stored = await upstream_client.responses.retrieve(crisis.response_id)
    assert stored.instructions == PERSONA.coach  # the shared prefix is untouched


async def test_second_long_prefix_call_reads_cached_tokens(llm: Llm, offline_openai: Any) -> None:
    user_id = uid()
    long_turns = [t for i in range(12) for t in (
        user(f"Day {i}: I logged my run, my sleep, my meals and my mood, and I journaled about "
             "what got in the way of training this week and what I will change next week."),
        coach(f"Day {i}: Good detail. Keep the log going and pick one change to test tomorrow."),
    )]
    conv = await llm.stub.CreateConversation(
        pb.CreateConversationRequest(user_id=user_id, seed_turns=long_turns), timeout=5
    )
    request = pb.StatefulTurnRequest(user_id=user_id, conversation_id=conv.conversation_id,
                                     message="what should I focus on?", audience=SAM,
                                     generation=gen(CHECK_IN))
    first = await llm.stub.StatefulTurn(request, timeout=5)
    assert first.usage.input_tokens > 1024
    seen = Seen(offline_openai)
    second = await llm.stub.StatefulTurn(request, timeout=5)
    assert second.usage.cached_input_tokens >= 1024
    assert second.usage.cached_input_tokens == seen.delta("cached_tokens")
    assert second.usage.input_tokens == seen.delta("input_tokens")


async def test_a_retried_turn_is_answered_once(llm: Llm, offline_openai: Any) -> None:
    user_id = uid()
    conv = await llm.stub.CreateConversation(pb.CreateConversationRequest(user_id=user_id), timeout=5)
    request = pb.StatefulTurnRequest(request_id="req-1", user_id=user_id,
                                     conversation_id=conv.conversation_id, message="hey",
                                     audience=SAM, generation=gen(CHECK_IN))
    seen = Seen(offline_openai)
    first = await llm.stub.StatefulTurn(request, timeout=5)
    again = await llm.stub.StatefulTurn(request, timeout=5)
    assert again == first
    assert seen.delta("model_calls") == 1


# ---- stateful tier: Assistants API v2 --------------------------------------------------


@pytest.fixture(scope="module")
async def assistants_llm(offline_openai: Any) -> AsyncIterator[Llm]:
    async with running_llm(offline_openai, {"COACH_STATEFUL_API": "assistants",
                                            "COACH_RUN_POLL_SECONDS": "0.01"}) as running:
        yield running


async def _assistants(client: openai.AsyncOpenAI) -> list[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        page = await client.beta.assistants.list(limit=100)
    return list(page.data)


async def _run(client: openai.AsyncOpenAI, thread_id: str, run_id: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return await client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)


async def test_assistants_backend_runs_the_same_flow(
    assistants_llm: Llm, offline_openai: Any, upstream_client: openai.AsyncOpenAI
) -> None:
    user_id = uid()
    conv = await assistants_llm.stub.CreateConversation(
        pb.CreateConversationRequest(user_id=user_id, summary="User is training for a 10k.",
                                     seed_turns=[user("hey"), coach("What's the plan today?")]),
        timeout=5,
    )
    assert conv.api == pb.STATEFUL_API_ASSISTANTS and conv.conversation_id.startswith("thread_")
    appended = await assistants_llm.stub.AppendTurns(
        pb.AppendTurnsRequest(conversation_id=conv.conversation_id, turns=[user("done"), coach("Nice")]),
        timeout=5,
    )
    assert appended.appended == 2

    seen = Seen(offline_openai)
    goal = await assistants_llm.stub.StatefulTurn(goal_request(user_id, conv.conversation_id),
                                                  timeout=5)
    assert [c.name for c in goal.tool_calls] == ["save_goal"]
    assert json.loads(goal.tool_calls[0].output_json)["goal"] == "run a 10k by June"
    assert goal.texts and "run a 10k by June" in goal.texts[0]
    assert seen.requests("POST /v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs") == 1
    assert seen.requests("GET /v1/threads/{thread_id}/runs/{run_id}") >= 2  # polled
    assert goal.usage.input_tokens == seen.delta("input_tokens")
    assert goal.usage.output_tokens == seen.delta("output_tokens")
    run = await _run(upstream_client, conv.conversation_id, goal.response_id)
    assert [t.function.name for t in run.tools] == ["save_goal"]
    # A run waits for the outputs and writes on: it asks for the reply after them, once.
    assert run.instructions == f"{PERSONA.coach}\n\n{PERSONA.tools_assistants}"
    assert len(goal.texts) == 1

    plain = await assistants_llm.stub.StatefulTurn(
        pb.StatefulTurnRequest(user_id=user_id, conversation_id=conv.conversation_id,
                               message="feeling good today", audience=SAM, generation=gen(CHECK_IN),
                               prior_turns=[user("walked 5k"), coach("Lovely")]),
        timeout=5,
    )
    assert plain.texts and not plain.tool_calls
    with warnings.catch_warnings():  # the SDK marks the Assistants API deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        listed = await upstream_client.beta.threads.messages.list(conv.conversation_id,
                                                                  order="asc")
    assert [m.content[0].text.value for m in listed.data][-4:-1] == [  # type: ignore[union-attr]
        "walked 5k", "Lovely", "feeling good today"]  # a thread takes them one call each
    run = await _run(upstream_client, conv.conversation_id, plain.response_id)
    assert run.tools == [] and run.instructions == PERSONA.coach

    crisis = await assistants_llm.stub.StatefulTurn(
        pb.StatefulTurnRequest(user_id=user_id, conversation_id=conv.conversation_id,
                               message="I can't do this anymore", audience=SAM,
                               generation=gen("MESSAGE_TYPE_CRISIS")),
        timeout=5,
    )
    run = await _run(upstream_client, conv.conversation_id, crisis.response_id)
    assert run.instructions == f"{PERSONA.coach}\n\n{PERSONA.safety}"  # additional_instructions


async def test_one_assistant_is_reused_across_restarts(
    assistants_llm: Llm, offline_openai: Any, upstream_client: openai.AsyncOpenAI
) -> None:
    async def turn(service: Llm) -> str:
        conv = await service.stub.CreateConversation(pb.CreateConversationRequest(user_id=uid()),
                                                     timeout=5)
        reply = await service.stub.StatefulTurn(
            pb.StatefulTurnRequest(user_id="u", conversation_id=conv.conversation_id,
                                   message="hey", audience=SAM, generation=gen(CHECK_IN)),
            timeout=5,
        )
        run = await _run(upstream_client, conv.conversation_id, reply.response_id)
        return str(run.assistant_id)

    ours = await turn(assistants_llm)
    count = len(await _assistants(upstream_client))
    async with running_llm(offline_openai, {"COACH_STATEFUL_API": "assistants"}) as restarted:
        assert await turn(restarted) == ours  # found by name + definition hash
    assert len(await _assistants(upstream_client)) == count

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mine = await upstream_client.beta.assistants.create(model="gpt-5.5", name="operator's own")
    async with running_llm(offline_openai, {"COACH_STATEFUL_API": "assistants",
                                            "COACH_ASSISTANT_ID": mine.id}) as configured:
        assert await turn(configured) == mine.id


async def test_the_request_api_field_overrides_the_default(llm: Llm) -> None:
    conv = await llm.stub.CreateConversation(
        pb.CreateConversationRequest(user_id=uid(), api=pb.STATEFUL_API_ASSISTANTS), timeout=5
    )
    assert conv.api == pb.STATEFUL_API_ASSISTANTS
    reply = await llm.stub.StatefulTurn(  # api unset: the thread id says which API it is on
        pb.StatefulTurnRequest(user_id="u", conversation_id=conv.conversation_id, message="hey",
                               audience=SAM, generation=gen(CHECK_IN)),
        timeout=5,
    )
    assert reply.response_id.startswith("run_")


@pytest.mark.parametrize("backend", ["responses", "assistants"])
async def test_a_conversation_no_longer_used_is_deleted_upstream(
    backend: str, llm: Llm, assistants_llm: Llm, upstream_client: openai.AsyncOpenAI
) -> None:
    service = llm if backend == "responses" else assistants_llm
    conv = await service.stub.CreateConversation(
        pb.CreateConversationRequest(user_id=uid(), summary="Training for a 10k."), timeout=5)
    deleted = await service.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=conv.conversation_id), timeout=5)
    assert deleted.existed
    with pytest.raises(openai.NotFoundError), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if backend == "responses":
            await upstream_client.conversations.retrieve(conv.conversation_id)
        else:
            await upstream_client.beta.threads.retrieve(conv.conversation_id)
    again = await service.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=conv.conversation_id), timeout=5)
    assert not again.existed  # already gone: done, not an error


async def test_the_baseline_prompt_prefix_is_the_persona_and_every_tool(llm: Llm) -> None:
    reply = await llm.stub.GetPromptPrefix(pb.GetPromptPrefixRequest())
    persona = f"{PERSONA.coach}\n\n{PERSONA.tools}"
    catalog = load_tools(DATA_DIR / "tools.yaml")
    definitions = json.dumps(ToolCatalog.chat_format(tuple(catalog.tools.values())), sort_keys=True)
    assert reply.encoding == "o200k_base"
    assert reply.baseline_tokens == count_tokens(persona) + count_tokens(definitions) > 500
