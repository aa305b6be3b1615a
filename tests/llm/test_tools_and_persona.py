"""The data files operators edit: tools per message type, the persona; no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.llm.config import DATA_DIR, Settings
from services.llm.persona import load_persona
from services.llm.tools import ToolCatalog, load_tools
from services.llm.turns import Audience


@pytest.fixture(scope="module")
def catalog() -> ToolCatalog:
    return load_tools(DATA_DIR / "tools.yaml")


def test_only_turns_that_need_a_tool_carry_it(catalog: ToolCatalog) -> None:
    names = lambda kind: [t.name for t in catalog.for_turn(kind, all_tools=False)]
    assert names("MESSAGE_TYPE_GOAL_SETTING") == ["save_goal"]
    assert names("MESSAGE_TYPE_ACCOUNTABILITY") == ["log_commitment"]
    for kind in ("MESSAGE_TYPE_GREETING", "MESSAGE_TYPE_CHECK_IN", "MESSAGE_TYPE_DEEP_COACHING",
                 "MESSAGE_TYPE_CRISIS", ""):
        assert names(kind) == []


def test_only_recording_tools_let_a_reply_come_with_the_call(catalog: ToolCatalog) -> None:
    assert catalog.records_only(["save_goal"]) and catalog.records_only(["save_goal", "log_commitment"])
    # The model must read get_progress's answer before replying; unknown names never qualify.
    assert not catalog.records_only(["save_goal", "get_progress"])
    assert not catalog.records_only(["nope"]) and not catalog.records_only([])


def test_baseline_sends_every_tool_sorted(catalog: ToolCatalog) -> None:
    tools = catalog.for_turn("MESSAGE_TYPE_GREETING", all_tools=True)
    assert [t.name for t in tools] == ["get_progress", "log_commitment", "save_goal"]


def test_definitions_serialize_byte_stable(catalog: ToolCatalog) -> None:
    tools = catalog.for_turn("", all_tools=True)
    first = json.dumps(ToolCatalog.responses_format(tools))
    again = json.dumps(ToolCatalog.responses_format(tuple(reversed(tools))))
    assert first == again
    chat = ToolCatalog.chat_format(tools)
    assert list(chat[0]) == sorted(chat[0]) and list(chat[0]["function"]) == sorted(chat[0]["function"])
    save_goal = next(t for t in ToolCatalog.responses_format(tools) if t["name"] == "save_goal")
    assert save_goal["strict"] is True
    assert save_goal["parameters"]["required"] == ["goal", "deadline"]


def test_running_tools_validates_arguments(catalog: ToolCatalog) -> None:
    sam = Audience("Sam", 4)
    saved = json.loads(catalog.run("save_goal", '{"goal": "run a 10k", "deadline": "June"}', sam))
    assert saved == {"ok": True, "saved": "goal", "goal": "run a 10k", "deadline": "June"}
    assert json.loads(catalog.run("get_progress", '{"period": "week"}', sam))["current_streak_days"] == 4
    assert json.loads(catalog.run("save_goal", "not json", sam))["ok"] is False
    assert json.loads(catalog.run("save_goal", '{"deadline": ""}', sam))["ok"] is False
    assert json.loads(catalog.run("delete_everything", "{}", sam))["ok"] is False


def test_persona_has_its_sections_and_crisis_lines() -> None:
    persona = load_persona(DATA_DIR / "persona.yaml")
    assert "accountability coach" in persona.coach
    # Tool guidance travels only with turns that carry tools, never in the shared text.
    assert "function" in persona.tools and "function" not in persona.coach.lower()
    # Responses: the reply with a recording call; Assistants runs: after its output.
    assert "same response" in persona.tools and "same response" not in persona.tools_assistants
    assert "988" in persona.safety and "emergency services" in persona.safety
    assert "summary" in persona.summary.lower()
    # Per-user text never goes into the shared prefix.
    assert "{" not in persona.coach


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tools: [{name: save_goal}]", "description"),
        ("tools: []\nneeds: {MESSAGE_TYPE_NOPE: []}", "MESSAGE_TYPE_NOPE"),
        ("tools: []\nneeds: {MESSAGE_TYPE_GOAL_SETTING: [save_goal]}", "unknown tools"),
        ("[1, 2", "not valid YAML"),
        (("tools: [{name: a, records: yes please, description: d, parameters: {type: object,"
          " properties: {}}}]"), "records"),
    ],
)
def test_bad_tools_files_fail_start_up_clearly(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tools.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_tools(path)


def test_bad_persona_fails_start_up_clearly(tmp_path: Path) -> None:
    path = tmp_path / "persona.yaml"
    path.write_text("coach: hi\ntools: x\ntools_assistants: x\nsafety: ''\nsummary: x\n")
    with pytest.raises(ConfigError, match="safety"):
        load_persona(path)


def test_tiers_can_point_at_different_endpoints() -> None:
    settings = Settings.from_env({
        "OPENAI_BASE_URL": "http://offline/v1", "OPENAI_API_KEY": "k",
        "COACH_CHEAP_BASE_URL": "http://127.0.0.1:11434/v1", "COACH_CHEAP_API_KEY": "ollama",
        "COACH_CHEAP_MODEL": "llama3.1:8b",
    })
    assert (settings.cheap.base_url, settings.cheap.api_key) == ("http://127.0.0.1:11434/v1", "ollama")
    assert (settings.stateful.base_url, settings.stateful.api_key) == ("http://offline/v1", "k")
    assert settings.cheap.default_model == "llama3.1:8b"
    assert settings.stateful_api == "responses"
    with pytest.raises(ConfigError, match="COACH_STATEFUL_API"):
        Settings.from_env({"OPENAI_API_KEY": "k", "COACH_STATEFUL_API": "threads"})
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        Settings.from_env({})
