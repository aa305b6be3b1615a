"""COACH_POLICY=baseline: the app as it was before, for side-by-side cost comparison.

Every message goes to the stateful tier on the strong model with every function
definition and no pruning, even a bare greeting.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from coach.router.v1 import router_service_pb2
from coach.type.v1 import types_pb2

from tests.helpers.suite import Suite, start_suite, stop_suite


@pytest.fixture(scope="module")
async def baseline(pg_url: str, offline_openai: Any) -> AsyncIterator[Suite]:
    running = await start_suite(pg_url, offline_openai, {"COACH_POLICY": "baseline"})
    yield running
    await stop_suite(running)


async def test_every_message_goes_to_the_strong_stateful_tier(baseline: Suite) -> None:
    user = f"user-{uuid.uuid4().hex[:12]}"
    replies = []
    for text in ("hi", "I want to run a 10k", "ok", "hey", "thanks!", "quick q: is coffee ok before a run?"):
        replies.append(await baseline.router.Chat(router_service_pb2.ChatRequest(
            user_id=user, message=text, request_id=uuid.uuid4().hex,
            context=types_pb2.UserContext(current_streak=5, local_hour=9))))
    assert {r.route for r in replies} == {types_pb2.ROUTE_ASSISTANT}
    assert {r.model for r in replies} == {"gpt-5.5"}
    assert len({r.conversation_id for r in replies}) == 1
    assert all(r.cost_usd_nanos > 0 for r in replies)
    # no pruning and all tools: the input grows with the history on every turn
    # (the goal turn makes two upstream calls: a save_goal call and its answer)
    inputs = [r.usage.input_tokens for r in replies]
    plain = [inputs[0], *inputs[2:]]
    assert plain == sorted(plain) and plain[-1] > plain[0]
