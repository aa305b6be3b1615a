"""Router data files (YAML) with typed accessors that fail with a clear ConfigError."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import ConfigError as _BaseConfigError


class ConfigError(_BaseConfigError):
    """A router data file is invalid. The message names the file, the key and the problem."""

    def __init__(self, file: str | Path, key: str, problem: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        super().__init__(f"{self.file}: {key}: {problem}")


class DataFile:
    """A parsed YAML data file with typed accessors that fail with a clear ConfigError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(path, "(file)", "file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(path, "(file)", f"not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(path, "(top level)", "must be a mapping of keys")
        self.root: dict[str, Any] = raw

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    def get(self, node: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> Any:
        if key not in node:
            if required:
                raise self.error(f"{where}.{key}".lstrip("."), "missing")
            return None
        return node[key]

    def mapping(self, node: Mapping[str, Any], key: str, where: str = "",
                *, required: bool = True) -> dict[str, Any]:
        value = self.get(node, key, where, required=required)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.error(f"{where}.{key}".lstrip("."), "must be a mapping")
        return value

    def str_list(self, node: Mapping[str, Any], key: str, where: str = "",
                 *, required: bool = True, non_empty: bool = True) -> list[str]:
        path = f"{where}.{key}".lstrip(".")
        value = self.get(node, key, where, required=required)
        if value is None and not required:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.error(path, "must be a list of non-empty strings")
        if non_empty and not value:
            raise self.error(path, "must not be empty")
        return [str(v) for v in value]

