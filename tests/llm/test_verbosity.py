"""Short answers without truncation: the verbosity of each message type (data/verbosity.yaml)
is sent on both tiers to the models that take it; max_output_tokens stays a bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from coach.llm.v1 import llm_service_pb2 as pb

from services.common.errors import ConfigError
from services.llm.config import DATA_DIR
from services.llm.verbosity import load_verbosity
from tests.llm.conftest import Llm
from tests.llm.test_service import SAM, gen, uid

pytestmark = pytest.mark.usefixtures("healthy_upstream")

QUESTION = "How do I keep going when motivation drops?"


def test_the_shipped_file_keeps_short_types_short() -> None:
    policy = load_verbosity(DATA_DIR / "verbosity.yaml")
    assert policy.for_turn("gpt-5.4-mini", "MESSAGE_TYPE_ACKNOWLEDGEMENT") == "low"
    assert policy.for_turn("gpt-5.5", "MESSAGE_TYPE_DEEP_COACHING") == "medium"
    assert policy.for_turn("gpt-6.1-terra", "") == "medium"
    assert policy.for_turn("gpt-4.1-mini", "MESSAGE_TYPE_GREETING") is None  # no such parameter
    assert policy.for_turn("llama3.1:8b", "MESSAGE_TYPE_GREETING") is None


@pytest.mark.parametrize(("text", "problem"), [
    ("default: terse\n", "default must be one of"),
    ("per_type: {SMALL_TALK: low}\n", "not a message type"),
    ("per_type: {GREETING: tiny}\n", "must be one of"),
])
def test_a_bad_verbosity_file_stops_start_up(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "verbosity.yaml"
    path.write_text("models: [gpt-5]\n" + text)
    with pytest.raises(ConfigError, match=problem):
        load_verbosity(path)


async def test_cheap_tier_short_types_fit_their_bound(llm: Llm) -> None:
    # An acknowledgement gets 40 tokens (tiers.yaml): at low verbosity the reply fits whole.
    short = await llm.stub.Complete(pb.CompleteRequest(
        user_id=uid(), message=QUESTION, audience=SAM,
        generation=gen("MESSAGE_TYPE_ACKNOWLEDGEMENT", "gpt-5.4-mini", 40)), timeout=5)
    assert not short.usage.truncated and short.usage.output_tokens <= 40
    # The same text typed as a question (medium) is longer, and would not have fit in 40.
    longer = await llm.stub.Complete(pb.CompleteRequest(
        user_id=uid(), message=QUESTION, audience=SAM,
        generation=gen("MESSAGE_TYPE_QUESTION", "gpt-5.4-mini", 220)), timeout=5)
    assert not longer.usage.truncated
    assert longer.usage.output_tokens > 40 > short.usage.output_tokens


async def test_a_reply_cut_by_its_bound_is_reported_truncated(llm: Llm) -> None:
    cut = await llm.stub.Complete(pb.CompleteRequest(
        user_id=uid(), message=QUESTION, audience=SAM,
        generation=gen("MESSAGE_TYPE_QUESTION", "gpt-5.4-mini", 12)), timeout=5)
    assert cut.usage.truncated and cut.usage.output_tokens == 12


async def test_stateful_turns_send_text_verbosity(
    llm: Llm, upstream_client: openai.AsyncOpenAI, offline_openai: Any
) -> None:
    user_id = uid()
    conv = await llm.stub.CreateConversation(pb.CreateConversationRequest(user_id=user_id),
                                             timeout=5)
    reply = await llm.stub.StatefulTurn(pb.StatefulTurnRequest(
        user_id=user_id, conversation_id=conv.conversation_id, message=QUESTION, audience=SAM,
        generation=gen("MESSAGE_TYPE_ACCOUNTABILITY", "gpt-5.4", 400)), timeout=5)
    stored = await upstream_client.responses.retrieve(reply.response_id)
    assert stored.text is not None and stored.text.verbosity == "low"
    assert not reply.usage.truncated


# ---- prompt-cache retention per tier (data/caching.yaml) --------------------------------------


def test_the_shipped_caching_file_keeps_the_stateful_tier_warm_for_a_day() -> None:
    from services.llm.caching import load_caching, user_cache_key

    policy = load_caching(DATA_DIR / "caching.yaml")
    assert policy.retention_for("stateful", "gpt-5.5") == "24h"
    assert policy.retention_for("cheap", "gpt-5.4-mini") == "in_memory"
    assert policy.retention_for("stateful", "gpt-4.1") is None  # not sent to older models
    assert user_cache_key("stateful", "persona", "ana") != user_cache_key("stateful", "persona",
                                                                          "bo")
    assert "ana" not in user_cache_key("stateful", "persona", "ana")


@pytest.mark.parametrize(("text", "problem"), [
    ("retention: {stateful: 1w}\n", "must be one of"),
    ("retention: {upkeep: 24h}\n", "not a tier"),
    ("stable_tools: sometimes\n", "stable_tools must be true or false"),
])
def test_a_bad_caching_file_stops_start_up(tmp_path: Path, text: str, problem: str) -> None:
    from services.llm.caching import load_caching

    path = tmp_path / "caching.yaml"
    path.write_text("models: [gpt-5]\n" + text)
    with pytest.raises(ConfigError, match=problem):
        load_caching(path)
