"""The coach persona (``data/persona.yaml``): one text shared by both tiers.

Loaded and validated once at start-up; a missing or blank section is a
ConfigError naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.datafiles import load_mapping
from services.common.errors import ConfigError

SECTIONS = ("coach", "tools", "tools_assistants", "safety", "summary")


@dataclass(frozen=True)
class Persona:
    coach: str  # system prompt (cheap tier) and instructions (stateful tier)
    tools: str  # how to use function tools: only on turns that carry them
    tools_assistants: str  # the same for Assistants API runs (the reply after the output)
    safety: str  # added to crisis turns only
    summary: str  # instructions of the running summary


def load_persona(path: Path) -> Persona:
    data = load_mapping(path, "persona", f"keys {', '.join(SECTIONS)}")
    texts: dict[str, str] = {}
    for key in SECTIONS:
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: `{key}` must be a non-blank text")
        texts[key] = value.strip()
    return Persona(**texts)
