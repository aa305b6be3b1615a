"""Reading an operator's YAML data file: one way to fail, the same words for every file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from services.common.errors import ConfigError


def load_mapping(path: Path, what: str, shape: str) -> dict[str, Any]:
    """The YAML mapping in ``path``, or a ConfigError naming the file: it cannot be read,
    it is not YAML, or it is not a mapping (``shape`` says what the mapping must hold, for
    example "models and retention"). ``what`` names the file in the first case ("caching")."""
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping with {shape}")
    return data
