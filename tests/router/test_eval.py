"""The router meets its targets on the labelled sets (ours, and the shared sample)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from services.router.decision import Router

REPO = Path(__file__).resolve().parents[2]


def _eval_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eval_router", REPO / "scripts" / "eval_router.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("eval_router", module)
    spec.loader.exec_module(module)
    return module


EVAL = _eval_module()


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.from_files()


def _assert_targets(router: Router, path: Path) -> None:
    outcomes = EVAL.evaluate(router, EVAL.load_cases(path))
    figures = EVAL.score(outcomes)
    misses = [f"{o.case.expect}: {o.case.text!r} -> {o.decision.route.name} ({o.decision.reason})"
              for o in outcomes if not o.ok]
    assert not EVAL.missed_targets(figures), (figures, misses)


def test_own_eval_set_meets_targets(router: Router) -> None:
    cases = EVAL.load_cases(EVAL.DEFAULT_FILE)
    assert len(cases) >= 250
    expects = {c.expect for c in cases}
    types = {c.expected_type for c in cases}
    assert expects == {"canned", "simple", "complex", "safety"}
    assert len(types) == 11, "every message type is covered"
    _assert_targets(router, EVAL.DEFAULT_FILE)


def test_shared_sample_meets_targets(router: Router) -> None:
    if not EVAL.SHARED_SAMPLE.exists():
        pytest.skip(f"{EVAL.SHARED_SAMPLE} is absent")
    _assert_targets(router, EVAL.SHARED_SAMPLE)


def test_every_safety_message_is_crisis_even_in_baseline() -> None:
    baseline = Router.from_files(policy="baseline")
    for case in EVAL.load_cases(EVAL.DEFAULT_FILE):
        if case.expect == "safety":
            assert baseline.decide(case.text, case.ctx).crisis, case.text
