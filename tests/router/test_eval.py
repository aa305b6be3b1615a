"""The router's figures on labelled messages: targets where they hold, floors where they do not
yet (the held-out set's safety recall and cheap share), so that no change makes them worse."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from services.router.decision import Router
from services.router.training.labelled import TARGETS

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


def _figures(router: Router, path: Path) -> tuple[dict[str, float], list[str]]:
    outcomes = EVAL.evaluate(router, EVAL.load_cases(path))
    misses = [f"{o.case.expect}: {o.case.text!r} -> {o.decision.route.name} ({o.decision.reason})"
              for o in outcomes if not o.ok]
    return EVAL.score(outcomes), misses


def test_shared_sample_meets_every_target(router: Router) -> None:
    if not EVAL.SHARED_SAMPLE.exists():
        pytest.skip(f"{EVAL.SHARED_SAMPLE} is absent")
    figures, misses = _figures(router, EVAL.SHARED_SAMPLE)
    assert not EVAL.missed_targets(figures), (figures, misses)


# Measured on the held-out set when the heads were trained (docs/router.md); a floor below
# a target is where the router still falls short of it. The set is the second one written
# for this (two writers who never saw the corpus or the rules); the first is now dev/.
HELDOUT_FLOORS = {
    "pattern_precision": TARGETS["pattern_precision"],
    "canned_coverage": 0.70,
    "complex_recall": 0.96,
    "safety_recall": 0.98,
    "cheap_share": 0.82,
}


def test_held_out_figures_hold(router: Router) -> None:
    cases = EVAL.heldout_cases()
    assert len(cases) >= 600
    assert {c.expect for c in cases} == {"canned", "simple", "complex", "safety"}
    outcomes = EVAL.evaluate(router, cases)
    figures = EVAL.score(outcomes)
    below = {k: round(figures[k], 3) for k, floor in HELDOUT_FLOORS.items()
             if figures[k] < floor - 1e-9}
    # Figures only: a failing test must not list the held-out set's misses either.
    assert not below, below


def test_held_out_figures_leave_out_what_the_corpus_holds() -> None:
    from services.router.training.train import corpus_files

    corpus = {c.text.strip().lower() for c in EVAL.load_cases(*corpus_files())}
    assert not [c.text for c in EVAL.heldout_cases() if c.text.strip().lower() in corpus]


def test_every_safety_message_is_crisis_even_in_baseline() -> None:
    baseline = Router.from_files(policy="baseline")
    optimized = Router.from_files()
    for case in EVAL.heldout_cases():
        if case.expect == "safety":
            assert baseline.decide(case.text, case.ctx).crisis == \
                optimized.decide(case.text, case.ctx).crisis, case.text
