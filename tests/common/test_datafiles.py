"""load_mapping: an operator's YAML file is a mapping, or start-up stops naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.datafiles import load_mapping
from services.common.errors import ConfigError


def test_a_mapping_is_read(tmp_path: Path) -> None:
    path = tmp_path / "levers.yaml"
    path.write_text("version: 1\nretention: {stateful: 24h}\n", encoding="utf-8")
    assert load_mapping(path, "levers", "a version") == {"version": 1,
                                                        "retention": {"stateful": "24h"}}


@pytest.mark.parametrize(("text", "problem"), [
    (None, "cannot read the levers file"),
    ("[1, 2", "is not valid YAML"),
    ("- a\n- b\n", "must be a mapping with a version"),
    ("", "must be a mapping with a version"),
])
def test_what_is_not_a_mapping_stops_start_up_naming_the_file(
        tmp_path: Path, text: str | None, problem: str) -> None:
    path = tmp_path / "levers.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=problem) as caught:
        load_mapping(path, "levers", "a version")
    assert str(path) in str(caught.value)
