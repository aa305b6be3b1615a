"""What the llm service reads off an answer: cache writes, the tier the upstream REPORTS (not
the one requested) and whether max_output_tokens cut the reply off."""

from __future__ import annotations

from typing import Any

from openai.types.responses import Response

from services.common.usage import Usage
from services.llm.cheap_tier import chat_usage
from services.llm.responses_backend import response_usage


def a_response(**overrides: Any) -> Response:
    body: dict[str, Any] = {
        "id": "resp_1", "object": "response", "created_at": 0, "model": "gpt-5.6-sol",
        "status": "completed", "output": [], "parallel_tool_calls": False, "tool_choice": "auto",
        "tools": [], "service_tier": "flex",
        "usage": {"input_tokens": 3000, "output_tokens": 200, "total_tokens": 3200,
                  "input_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 1200},
                  "output_tokens_details": {"reasoning_tokens": 40}},
    }
    body.update(overrides)
    return Response.model_validate(body)


def test_responses_usage_carries_cache_writes_and_the_reported_tier() -> None:
    assert response_usage(a_response()) == Usage(
        input_tokens=3000, cached_input_tokens=1024, output_tokens=200, reasoning_tokens=40,
        cache_write_tokens=1200, service_tier="flex", truncated=False)


def test_an_incomplete_response_is_a_truncated_reply() -> None:
    cut = a_response(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    assert response_usage(cut).truncated
    filtered = a_response(status="incomplete", incomplete_details={"reason": "content_filter"})
    assert not response_usage(filtered).truncated


def test_chat_usage_reads_writes_tier_and_length_finish() -> None:
    completion = {
        "model": "gpt-5.6-luna", "service_tier": "priority",
        "choices": [{"index": 0, "finish_reason": "length",
                     "message": {"role": "assistant", "content": "Try a ten-minute"}}],
        "usage": {"prompt_tokens": 1500, "completion_tokens": 60,
                  "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 1100}},
    }
    assert chat_usage(completion) == Usage(
        input_tokens=1500, output_tokens=60, cache_write_tokens=1100,
        service_tier="priority", truncated=True)
    completion["choices"][0]["finish_reason"] = "stop"
    del completion["service_tier"]
    assert chat_usage(completion) == Usage(input_tokens=1500, output_tokens=60,
                                           cache_write_tokens=1100)
