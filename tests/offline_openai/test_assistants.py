"""Assistants API v2 through the real openai SDK: assistants, threads, messages, runs."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from services.offline_openai import OfflineOpenAI

SAVE_GOAL_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "save_goal",
        "parameters": {"type": "object", "properties": {"goal": {"type": "string"}}},
    },
}


async def test_full_flow_run_completes_and_reply_lands_in_thread(
    client: openai.AsyncOpenAI,
) -> None:
    assistant = await client.beta.assistants.create(
        model="gpt-4o", name="Coach", instructions="You are a direct accountability coach."
    )
    assert (await client.beta.assistants.retrieve(assistant.id)).name == "Coach"
    thread = await client.beta.threads.create()
    await client.beta.threads.messages.create(thread.id, role="user", content="I missed my run")
    run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "queued"
    seen: list[str] = [run.status]
    while run.status not in ("completed", "failed", "requires_action"):
        run = await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
        seen.append(run.status)
    assert seen == ["queued", "in_progress", "completed"]
    assert run.model == "gpt-4o"
    assert run.usage is not None
    assert run.usage.prompt_tokens > 0
    assert run.usage.completion_tokens > 0
    assert run.usage.total_tokens == run.usage.prompt_tokens + run.usage.completion_tokens
    assert run.usage.model_extra is not None
    assert run.usage.model_extra["prompt_token_details"] == {"cached_tokens": 0}

    messages = await client.beta.threads.messages.list(thread.id, order="asc")
    assert [m.role for m in messages.data] == ["user", "assistant"]
    reply = messages.data[1]
    assert reply.run_id == run.id
    assert reply.assistant_id == assistant.id
    assert reply.content[0].type == "text"
    assert reply.content[0].text.value


async def test_create_and_poll_with_run_overrides(client: openai.AsyncOpenAI) -> None:
    assistant = await client.beta.assistants.create(model="gpt-4o", instructions="Coach.")
    thread = await client.beta.threads.create(
        messages=[
            {"role": "user", "content": "old message one"},
            {"role": "user", "content": "old message two"},
            {"role": "user", "content": "I crushed my workout"},
        ]
    )
    full = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=1
    )
    assert full.status == "completed"
    truncated = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        model="gpt-4o-mini",
        additional_instructions="Keep it short.",
        truncation_strategy={"type": "last_messages", "last_messages": 1},
        max_completion_tokens=2,
        temperature=0.2,
        poll_interval_ms=1,
    )
    assert truncated.model == "gpt-4o-mini"
    assert truncated.instructions == "Coach.\n\nKeep it short."
    assert truncated.status == "incomplete"
    assert truncated.usage is not None and full.usage is not None
    assert truncated.usage.completion_tokens == 2
    # the thread now holds the first prompt and its reply; the strategy keeps the reply only
    assert truncated.usage.prompt_tokens < full.usage.prompt_tokens + full.usage.completion_tokens


async def test_requires_action_then_submit_tool_outputs(client: openai.AsyncOpenAI) -> None:
    assistant = await client.beta.assistants.create(model="gpt-4o", tools=[SAVE_GOAL_TOOL])  # type: ignore[list-item]
    thread = await client.beta.threads.create()
    await client.beta.threads.messages.create(
        thread.id, role="user", content="I'm going to run a half marathon in October"
    )
    run = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=1
    )
    assert run.status == "requires_action"
    assert run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert len(calls) == 1
    assert calls[0].function.name == "save_goal"
    goal = json.loads(calls[0].function.arguments)["goal"]
    assert goal == "run a half marathon in October"
    usage_before = run.usage
    assert usage_before is not None

    run = await client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "{\"saved\": true}"}],
        poll_interval_ms=1,
    )
    assert run.status == "completed"
    assert run.usage is not None
    assert run.usage.prompt_tokens > usage_before.prompt_tokens  # both steps are billed
    messages = await client.beta.threads.messages.list(thread.id)
    assert messages.data[0].role == "assistant"
    assert goal in messages.data[0].content[0].text.value  # type: ignore[union-attr]


async def test_cancel_and_active_run_rules(client: openai.AsyncOpenAI) -> None:
    assistant = await client.beta.assistants.create(model="gpt-4o")
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
    run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    with pytest.raises(openai.BadRequestError):
        await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    cancelled = await client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelled.status == "cancelling"
    final = await client.beta.threads.runs.poll(run.id, thread_id=thread.id, poll_interval_ms=1)
    assert final.status == "cancelled"
    messages = await client.beta.threads.messages.list(thread.id)
    assert [m.role for m in messages.data] == ["user"]


async def test_unknown_ids_and_thread_delete(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.beta.assistants.retrieve("asst_missing")
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.retrieve("thread_missing")
    thread = await client.beta.threads.create()
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_missing")
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.runs.retrieve("run_missing", thread_id=thread.id)
    deleted = await client.beta.threads.delete(thread.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.messages.list(thread.id)


async def test_assistants_need_the_beta_header(server: OfflineOpenAI) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/threads", json={}) as response,
    ):
        assert response.status == 400
        body = await response.json()
    assert "OpenAI-Beta" in body["error"]["message"]
