"""With ``stable_tools`` (llm caching data) a stateful turn's prefix is the same bytes
whatever the message type; tool_choice, not the tools list, says what may be called."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from coach.llm.v1 import llm_service_pb2 as pb

from services.llm.config import DATA_DIR
from tests.helpers.llm_turns import CHECK_IN, PERSONA, SAM, gen, goal_turn, uid
from tests.helpers.services import running_llm

pytestmark = pytest.mark.usefixtures("healthy_upstream")


async def test_stable_tools_send_one_prefix_and_allow_only_the_type_s_tools(
    offline_openai: Any, upstream_client: openai.AsyncOpenAI, tmp_path: Path
) -> None:
    """With ``stable_tools`` (caching data) every turn opens with the same tools and
    instructions, and tool_choice lets a goal call only save_goal and a check-in nothing."""
    text = (DATA_DIR / "caching.yaml").read_text(encoding="utf-8")
    caching = tmp_path / "caching.yaml"
    caching.write_text(text.replace("stable_tools: false", "stable_tools: true"), encoding="utf-8")
    async with running_llm(offline_openai, {"COACH_LLM_CACHING_FILE": str(caching)}) as llm:
        user_id = uid()
        conversation_id, goal = await goal_turn(llm, user_id)
        check_in = await llm.stub.StatefulTurn(
            pb.StatefulTurnRequest(user_id=user_id, conversation_id=conversation_id,
                                   message="did my run", audience=SAM, generation=gen(CHECK_IN)),
            timeout=5,
        )
    assert not check_in.tool_calls
    first = await upstream_client.responses.retrieve(goal.response_id)
    second = await upstream_client.responses.retrieve(check_in.response_id)
    everything = ["get_progress", "log_commitment", "save_goal"]
    assert [t.name for t in first.tools] == [t.name for t in second.tools] == everything  # type: ignore[union-attr]
    assert first.instructions == second.instructions == f"{PERSONA.coach}\n\n{PERSONA.tools}"
    assert first.prompt_cache_key == second.prompt_cache_key
    allowed = first.tool_choice.model_dump()  # type: ignore[union-attr]
    assert allowed["type"] == "allowed_tools"
    assert [t["name"] for t in allowed["tools"]] == ["save_goal"]
    assert second.tool_choice == "none"
