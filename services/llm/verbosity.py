"""How long a reply should be, per message type (``data/verbosity.yaml``).

Sent as ``text.verbosity`` on the Responses API and ``verbosity`` on Chat Completions,
only to models that take it. A short type asks for a short reply rather than being
cut off by its max_output_tokens, which stays a safety bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.common.datafiles import load_mapping
from services.common.errors import ConfigError
from services.common.vocabulary import MessageType

LEVELS = ("low", "medium", "high")
_PREFIX = "MESSAGE_TYPE_"


@dataclass(frozen=True)
class VerbosityPolicy:
    default: str = "medium"
    per_type: dict[str, str] = field(default_factory=dict)  # "GOAL_SETTING" -> "medium"
    models: tuple[str, ...] = ()  # name prefixes of the models that take the parameter

    def for_turn(self, model: str, message_type: str) -> str | None:
        """The verbosity to send for this model and type (e.g. "MESSAGE_TYPE_GREETING"),
        or None when the model does not take the parameter."""
        if not model.startswith(self.models):
            return None
        return self.per_type.get(message_type.removeprefix(_PREFIX), self.default)


def load_verbosity(path: Path) -> VerbosityPolicy:
    data = load_mapping(path, "verbosity", "default, models and per_type")
    default = data.get("default", "medium")
    if default not in LEVELS:
        raise ConfigError(f"{path}: default must be one of {', '.join(LEVELS)}, not {default!r}")
    models = data.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{path}: models must be a list of model name prefixes")
    raw = data.get("per_type") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: per_type must map message types to a verbosity")
    names = {t.name for t in MessageType}
    per_type: dict[str, str] = {}
    for key, level in raw.items():
        name = str(key).removeprefix(_PREFIX)
        if name not in names:
            raise ConfigError(f"{path}: per_type.{key} is not a message type "
                              f"({', '.join(sorted(names))})")
        if level not in LEVELS:
            raise ConfigError(f"{path}: per_type.{key} must be one of {', '.join(LEVELS)}, "
                              f"not {level!r}")
        per_type[name] = str(level)
    return VerbosityPolicy(default=str(default), per_type=per_type, models=tuple(models))
