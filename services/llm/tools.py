"""Function tools (``data/tools.yaml``): which turns carry which, and running them.

A turn carries only the function definitions its message type needs (they
cost tokens on every call that carries them), every other turn carries none;
the baseline policy sends all of them. Definitions are serialized sorted by name with sorted keys, so every
caller that needs the same set sends the same bytes (a cacheable prefix).

Running a tool here means validating the model's arguments and answering
with what was recorded; the threads service stores the calls the llm service
returns (``StatefulTurnResponse.tool_calls``). A tool marked ``records`` only
confirms what it recorded, so a reply written with its call needs no second
model call (``ToolCatalog.records_only``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coach.type.v1 import types_pb2

from services.common.datafiles import load_mapping
from services.common.errors import ConfigError
from services.llm.turns import Audience

MESSAGE_TYPES = frozenset(types_pb2.MessageType.keys())


def _canonical(value: Any) -> Any:
    """The same value with every mapping's keys sorted (insertion order = JSON order)."""
    return json.loads(json.dumps(value, sort_keys=True, ensure_ascii=False))


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: Mapping[str, Any]
    records: bool = False  # its output only confirms what was recorded

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(self.parameters.get("required", ()))

    @property
    def properties(self) -> Mapping[str, Any]:
        props = self.parameters.get("properties", {})
        return props if isinstance(props, Mapping) else {}


class ToolCatalog:
    """Every tool the coach may call, and the tools each message type needs."""

    def __init__(self, tools: Sequence[ToolSpec], needs: Mapping[str, Sequence[str]]) -> None:
        self.tools = {tool.name: tool for tool in sorted(tools, key=lambda t: t.name)}
        self.needs = {kind: tuple(sorted(set(names))) for kind, names in needs.items()}

    def for_turn(self, message_type: str, *, all_tools: bool) -> tuple[ToolSpec, ...]:
        """The tools this turn carries: all (baseline), those its type needs, or none."""
        if all_tools:
            return tuple(self.tools.values())
        return tuple(self.tools[name] for name in self.needs.get(message_type, ()))

    def records_only(self, names: Sequence[str]) -> bool:
        """Whether every named tool only records (the model needs none of their outputs)."""
        return bool(names) and all(
            name in self.tools and self.tools[name].records for name in names
        )

    @staticmethod
    def allowed_format(names: Sequence[str]) -> str | dict[str, Any]:
        """Responses ``tool_choice`` that lets the model call only ``names`` of the tools
        sent ("none" for no tool at all)."""
        if not names:
            return "none"
        return {"type": "allowed_tools", "mode": "auto",
                "tools": [{"type": "function", "name": name} for name in sorted(names)]}

    @staticmethod
    def chat_format(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
        """Chat Completions / Assistants shape: {"type": "function", "function": {...}}."""
        return [
            _canonical(
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                }
            )
            for tool in sorted(tools, key=lambda t: t.name)
        ]

    @staticmethod
    def responses_format(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
        """Responses API shape: {"type": "function", "name", "parameters", "strict"}."""
        return [
            _canonical(
                {
                    "type": "function",
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                    "strict": True,
                }
            )
            for tool in sorted(tools, key=lambda t: t.name)
        ]

    def run(self, name: str, arguments_json: str, audience: Audience) -> str:
        """Executes one call; the JSON answer handed back to the model (errors included)."""
        tool = self.tools.get(name)
        if tool is None:
            return _answer({"ok": False, "error": f"unknown function {name!r}"})
        try:
            arguments = json.loads(arguments_json or "{}")
        except json.JSONDecodeError:
            return _answer({"ok": False, "error": "arguments are not valid JSON"})
        if not isinstance(arguments, dict):
            return _answer({"ok": False, "error": "arguments must be a JSON object"})
        missing = [key for key in tool.required if key not in arguments]
        if missing:
            return _answer({"ok": False, "error": f"missing arguments: {', '.join(missing)}"})
        values = {
            key: str(arguments.get(key, "")).strip()[:500] for key in tool.properties
        }
        if name == "save_goal":
            if not values.get("goal"):
                return _answer({"ok": False, "error": "goal is empty"})
            return _answer({"ok": True, "saved": "goal", **values})
        if name == "log_commitment":
            if not values.get("commitment"):
                return _answer({"ok": False, "error": "commitment is empty"})
            return _answer({"ok": True, "saved": "commitment", **values})
        if name == "get_progress":
            return _answer({"ok": True, "current_streak_days": audience.current_streak, **values})
        return _answer({"ok": True, "saved": name, **values})


def _answer(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_tools(path: Path) -> ToolCatalog:
    shape = "a `tools` list and a `needs` mapping"
    data = load_mapping(path, "tools", shape)
    if not isinstance(data.get("tools"), list):
        raise ConfigError(f"{path} must be a mapping with {shape}")
    specs: list[ToolSpec] = []
    for index, raw in enumerate(data["tools"]):
        where = f"{path}: tools[{index}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a mapping")
        name, description, parameters = raw.get("name"), raw.get("description"), raw.get("parameters")
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise ConfigError(f"{where}: `name` must be letters, digits and underscores")
        if not isinstance(description, str) or not description.strip():
            raise ConfigError(f"{where} ({name}): `description` must be a non-blank text")
        if not isinstance(parameters, dict) or parameters.get("type") != "object":
            raise ConfigError(f"{where} ({name}): `parameters` must be a JSON schema of type object")
        properties = parameters.get("properties")
        required = parameters.get("required", [])
        if not isinstance(properties, dict) or not isinstance(required, list):
            raise ConfigError(f"{where} ({name}): `parameters` needs `properties` and `required`")
        unknown = [key for key in required if key not in properties]
        if unknown:
            raise ConfigError(f"{where} ({name}): required {unknown} not in properties")
        records = raw.get("records", False)
        if not isinstance(records, bool):
            raise ConfigError(f"{where} ({name}): `records` must be true or false")
        specs.append(ToolSpec(name, description.strip(), _canonical(parameters), records))
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: tool names must be unique")
    needs_raw = data.get("needs") or {}
    if not isinstance(needs_raw, dict):
        raise ConfigError(f"{path}: `needs` must map message types to lists of tool names")
    needs: dict[str, list[str]] = {}
    for kind, listed in needs_raw.items():
        if kind not in MESSAGE_TYPES:
            raise ConfigError(f"{path}: needs key {kind!r} is not a coach.type.v1.MessageType name")
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise ConfigError(f"{path}: needs.{kind} must be a list of tool names")
        missing = [n for n in listed if n not in names]
        if missing:
            raise ConfigError(f"{path}: needs.{kind} names unknown tools {missing}")
        needs[kind] = list(listed)
    return ToolCatalog(specs, needs)
