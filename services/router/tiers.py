"""Tier and model choice: where each message type is answered and with what settings.

``data/tiers.yaml`` holds, per tier, the model and the default
``max_output_tokens`` / ``temperature``, with optional per-message-type
overrides (a type may even name its own model; crisis turns and the
baseline policy always get the tier's own model: ``strong_settings``). ``stateful_types`` lists the
types that need the stateful tier (memory of the relationship); every other
type goes to the cheap Chat Completions tier when it is not answered canned.
CRISIS must be a stateful type; the file is rejected otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.vocabulary import Route
from services.router.classifier import DataFile, MessageType

__all__ = ["CallSettings", "Route", "Tiers"]  # Route: the shared one, kept here for decision.py


@dataclass(frozen=True)
class CallSettings:
    """What an upstream call is made with."""

    model: str
    max_output_tokens: int
    temperature: float


_TIER_KEYS = {Route.COMPLETIONS: "completions", Route.ASSISTANT: "assistant"}


def _settings(data: DataFile, node: Mapping[str, Any], where: str,
              base: CallSettings | None) -> CallSettings:
    unknown = set(node) - {"model", "max_output_tokens", "temperature", "per_type"}
    if unknown:
        raise data.error(where, f"unknown keys {sorted(unknown)}")
    model = node.get("model", base.model if base else None)
    tokens = node.get("max_output_tokens", base.max_output_tokens if base else None)
    temp = node.get("temperature", base.temperature if base else None)
    if not isinstance(model, str) or not model.strip():
        raise data.error(f"{where}.model", "must be a model name")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or not 1 <= tokens <= 32_000:
        raise data.error(f"{where}.max_output_tokens", "must be an integer 1-32000")
    if not isinstance(temp, int | float) or isinstance(temp, bool) or not 0 <= temp <= 2:
        raise data.error(f"{where}.temperature", "must be a number 0-2")
    return CallSettings(model.strip(), tokens, float(temp))


class Tiers:
    """Loaded once from tiers.yaml; answers "which tier, which model, which settings"."""

    def __init__(self, table: Mapping[Route, Mapping[MessageType, CallSettings]],
                 stateful_types: frozenset[MessageType],
                 default_models: Mapping[Route, str] | None = None) -> None:
        self._table = {route: dict(per_type) for route, per_type in table.items()}
        self.stateful_types = stateful_types
        # The tier's own model (before per-type overrides): the baseline policy's model.
        self._default_models = dict(default_models or {})

    @classmethod
    def from_data(cls, data: DataFile) -> Tiers:
        table: dict[Route, dict[MessageType, CallSettings]] = {}
        defaults: dict[Route, str] = {}
        for route, key in _TIER_KEYS.items():
            node = data.mapping(data.root, key)
            base = _settings(data, node, key, None)
            defaults[route] = base.model
            per_type_node = data.mapping(node, "per_type", key, required=False)
            per_type = {t: base for t in MessageType}
            for name, override in per_type_node.items():
                where = f"{key}.per_type.{name}"
                try:
                    mtype = MessageType[str(name).removeprefix("MESSAGE_TYPE_")]
                except KeyError:
                    raise data.error(where, "unknown message type") from None
                if not isinstance(override, dict):
                    raise data.error(where, "must be a mapping")
                if "per_type" in override:
                    raise data.error(where, "per_type cannot nest")
                per_type[mtype] = _settings(data, override, where, base)
            table[route] = per_type
        names = data.str_list(data.root, "stateful_types")
        stateful: set[MessageType] = set()
        for i, name in enumerate(names):
            try:
                stateful.add(MessageType[name.removeprefix("MESSAGE_TYPE_")])
            except KeyError:
                raise data.error(f"stateful_types[{i}]", f"unknown message type {name!r}") from None
        if MessageType.CRISIS not in stateful:
            raise data.error("stateful_types", "must include CRISIS: a crisis is never "
                             "answered by the cheap tier")
        return cls(table, frozenset(stateful), defaults)

    def home_route(self, message_type: MessageType) -> Route:
        """The tier a message of this type goes to when it is not answered canned."""
        return Route.ASSISTANT if message_type in self.stateful_types else Route.COMPLETIONS

    def settings(self, route: Route, message_type: MessageType) -> CallSettings:
        """Model and call settings for a message of this type on this tier."""
        if route not in self._table:
            raise ValueError(f"{route.name} has no upstream call settings")
        return self._table[route][message_type]

    def strong_settings(self, route: Route, message_type: MessageType) -> CallSettings:
        """The type's settings on this tier, but always with the tier's own model (the
        baseline policy sends everything to the strong model)."""
        chosen = self.settings(route, message_type)
        model = self._default_models.get(route, chosen.model)
        return CallSettings(model, chosen.max_output_tokens, chosen.temperature)

    def models(self) -> frozenset[str]:
        return frozenset(s.model for per_type in self._table.values() for s in per_type.values())
