"""What the llm service's tests send: the persona, an audience, a generation, a goal turn."""

from __future__ import annotations

import json
import uuid

from coach.llm.v1 import llm_service_pb2 as pb

from services.llm.config import DATA_DIR
from services.llm.persona import load_persona
from tests.helpers.services import Llm

PERSONA = load_persona(DATA_DIR / "persona.yaml")
SAM = pb.Audience(display_name="Sam", current_streak=5)
GOAL = "MESSAGE_TYPE_GOAL_SETTING"
CHECK_IN = "MESSAGE_TYPE_CHECK_IN"


def gen(kind: str = CHECK_IN, model: str = "gpt-5.5", tokens: int = 120) -> pb.Generation:
    return pb.Generation(model=model, max_output_tokens=tokens, message_type=kind)


def uid() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def goal_request(user_id: str, conversation_id: str) -> pb.StatefulTurnRequest:
    """A goal-setting turn that should call save_goal("run a 10k by June")."""
    return pb.StatefulTurnRequest(user_id=user_id, conversation_id=conversation_id,
                                  message="My goal is to run a 10k by June", audience=SAM,
                                  generation=gen(GOAL))


async def goal_turn(llm: Llm, user_id: str) -> tuple[str, pb.StatefulTurnResponse]:
    conv = await llm.stub.CreateConversation(pb.CreateConversationRequest(user_id=user_id), timeout=5)
    reply = await llm.stub.StatefulTurn(goal_request(user_id, conv.conversation_id), timeout=5)
    assert [c.name for c in reply.tool_calls] == ["save_goal"]
    assert json.loads(reply.tool_calls[0].arguments_json)["goal"] == "run a 10k by June"
    assert json.loads(reply.tool_calls[0].output_json)["ok"] is True
    assert len(reply.texts) == 1 and "run a 10k by June" in reply.texts[0]
    return conv.conversation_id, reply
