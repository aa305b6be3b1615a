#!/usr/bin/env python3
"""Measure the router on labelled messages; exit 1 when a target is missed on a quoted set.

``make eval`` (no arguments) reports, in this order:

1. the **held-out set** (services/router/training/heldout/: two writers who never saw the
   corpus, the rules or the router's misses; never trained or tuned on, no miss ever read):
   the figures to quote;
2. the shared sample (../shared/eval/routing-sample.jsonl), when present;
3. the development set (services/router/training/dev/: the first held-out set; its misses
   were read while improving the rules and the corpus, so it is no longer held out);
4. the rules' own tuning set (tests/router/eval_set.jsonl: the word lists were written
   against it, so its figures say little about new messages);
5. **5-fold cross-validation on the corpus**: heads fitted on four folds score the fifth,
   and the whole router (rules + heads) is measured on those out-of-fold scores;
6. the **cost-quality curve** on the out-of-fold scores: cheap share against complex recall
   for each ``escalate_at``, the configured point marked; the crisis head's recall and
   false alarms for each ``crisis_at``. ``--svg FILE`` draws the curve.

Targets (labelled.TARGETS): pattern precision ≥ 0.98, canned coverage ≥ 0.80, complex recall
≥ 0.97 (complex and safety on the stateful tier), safety recall 1.0 (as CRISIS), cheap share
≥ 0.90 (canned and simple answered canned or on the cheap tier).

Usage: ``scripts/eval_router.py [--file F ...] [--show-misses] [--no-cv] [--svg F]``
(``--file``: only those files, no cross-validation).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from services.router.classifier import MessageType, NormalizedText
from services.router.classifier.learned import Opinion, RuleSignals
from services.router.decision import SENTENCE_MIN_TOKENS, Escalation, Router, sentences
from services.router.training.labelled import (
    EXPECTS,
    TARGETS,
    Case,
    Outcome,
    evaluate,
    load_cases,
    missed_targets,
    score,
)

HELDOUT = REPO / "services" / "router" / "training" / "heldout" / "heldout.jsonl"
DEV_SET = REPO / "services" / "router" / "training" / "dev" / "dev.jsonl"
DEFAULT_FILE = HELDOUT
RULES_TUNING_SET = REPO / "tests" / "router" / "eval_set.jsonl"
SHARED_SAMPLE = REPO.parent / "shared" / "eval" / "routing-sample.jsonl"
FOLDS = 5
TYPE_NAMES = [t.name for t in MessageType]

__all__ = ["DEFAULT_FILE", "HELDOUT", "SHARED_SAMPLE", "evaluate", "heldout_cases", "load_cases",
           "missed_targets", "score"]


def heldout_cases() -> list[Case]:
    """The held-out set less any message whose text is also in the corpus (short canned
    phrases such as "yo" or "kk" occur in both, written independently): a figure on them would
    be a figure on training data."""
    from services.router.training.train import corpus_files

    seen = {c.text.strip().lower() for c in load_cases(*corpus_files())}
    return [c for c in load_cases(HELDOUT) if c.text.strip().lower() not in seen]


def confusion_table(outcomes: Sequence[Outcome]) -> str:
    typed = [o for o in outcomes if o.case.expected_type]
    if not typed:
        return "(no 'type' labels: confusion table skipped)"
    counts = Counter((o.case.expected_type.removeprefix("MESSAGE_TYPE_"),
                      o.decision.message_type.name) for o in typed)
    head = f"{'expected / decided':<20}" + "".join(f"{n[:5]:>6}" for n in TYPE_NAMES) \
        + f"{'acc':>7}"
    lines = [head]
    for exp in TYPE_NAMES:
        row_total = sum(counts[(exp, p)] for p in TYPE_NAMES)
        if row_total:
            cells = "".join(f"{counts[(exp, p)] or '.':>6}" for p in TYPE_NAMES)
            lines.append(f"{exp:<20}{cells}{counts[(exp, exp)] / row_total:>7.2f}")
    agree = sum(counts[(n, n)] for n in TYPE_NAMES)
    lines.append(f"type agreement: {agree}/{len(typed)} = {agree / len(typed):.3f}")
    return "\n".join(lines)


def report(title: str, outcomes: Sequence[Outcome], show_misses: bool,
           confusion: bool = True) -> tuple[str, bool]:
    figures = score(outcomes)
    missed = missed_targets(figures)
    by = Counter(o.case.expect for o in outcomes)
    summary = ", ".join(f"{k} {by[k]}" for k in EXPECTS)
    out = [f"{title} — {len(outcomes)} messages ({summary})"]
    for name, value in figures.items():
        flag = "MISSED" if name in missed else "ok"
        out.append(f"  {name:<18} {value:6.3f}   target >= {TARGETS[name]:.2f}   {flag}")
    routes = Counter(o.decision.route.name for o in outcomes)
    out.append("  routes: " + ", ".join(f"{k} {v}" for k, v in sorted(routes.items())))
    learned = sum("learned" in o.decision.reason for o in outcomes)
    out.append(f"  decided by the learned heads: {learned}")
    calm = [o for o in outcomes if o.case.expect != "safety"]
    alarms = sum(o.decision.crisis for o in calm)
    out.append(f"  crisis false alarms: {alarms} of {len(calm)} other messages "
               f"({alarms / max(1, len(calm)):.3f}; of canned + simple: "
               f"{sum(o.decision.crisis for o in calm if o.case.expect != 'complex')})")
    if confusion:
        out += ["", confusion_table(outcomes)]
    misses = [o for o in outcomes if not o.ok]
    if misses and show_misses:
        out += ["", f"route misses ({len(misses)}):"]
        for o in misses:
            d = o.decision
            out.append(f"  {o.case.source}: expected {o.case.expect}, got {d.route.name}"
                       f"{' CRISIS' if d.crisis else ''} {d.message_type.name}: {o.case.text!r}"
                       f"\n      reason: {d.reason}")
    return "\n".join(out), not missed


# --------------------------------------------------------------------------- cross-validation


@dataclass(frozen=True)
class RecordedHeads:
    """Scores recorded per normalized text (out-of-fold ones), served as the heads would."""

    scores: dict[str, Opinion]

    def opinion(self, norm: NormalizedText, rules: RuleSignals) -> Opinion:
        return self.scores[norm.text]


@dataclass(frozen=True)
class CorpusFeatures:
    """The corpus's trainable rows and their features, computed once for every measurement
    made of them (each fit chooses its vocabulary from its own rows)."""

    featurizer: Any
    rows: list[Case]
    features: Any

    @classmethod
    def of(cls, corpus: Sequence[Case]) -> CorpusFeatures:
        from services.router.training.train import Featurizer, trainable

        featurizer = Featurizer.load()
        rows = trainable(corpus)
        return cls(featurizer, rows, featurizer.features(rows))


def out_of_fold_opinions(router: Router, corpus: Sequence[Case],
                         features: CorpusFeatures | None = None) -> dict[str, Opinion]:
    """Every corpus message scored by heads that never saw it: five fits on four folds each;
    rows with a coach turn (never trained on) by the heads fitted on all trainable rows."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from services.router.training.train import SEED, STATEFUL_TYPES, fit_heads

    features = features or CorpusFeatures.of(corpus)
    featurizer, rows, every = features.featurizer, features.rows, features.features
    labels = [c.expect for c in rows]
    scores: dict[str, Opinion] = {}
    assert router.escalation is not None
    long_message = router.escalation.sentence_min_words

    def record(fitted: Any, part: Any, cases: Sequence[Case], pieces: bool = True) -> None:
        st, cr, kinds = fitted.scores(part)
        for i, case in enumerate(cases):
            best = int(np.argmax(kinds[i]))
            scores[router.normalize(case.text).text] = Opinion(
                float(st[i]), float(cr[i]), MessageType[STATEFUL_TYPES[best]],
                float(kinds[i, best]))
        if pieces:  # the sentences the router's sentence check asks about, scored by the
            # same heads: those of messages of sentence_min_words or more
            parts = [replace(c, text=p, ctx=replace(c.ctx, history=()))
                     for c in cases if len(router.normalize(c.text).tokens) >= long_message
                     for p in sentences(c.text)
                     if len(router.normalize(p).tokens) >= SENTENCE_MIN_TOKENS
                     and router.normalize(p).text not in scores]
            if parts:
                record(fitted, featurizer.features(parts), parts, pieces=False)

    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED)
    for train_idx, test_idx in folds.split(np.zeros(len(rows)), labels):
        fitted = fit_heads(every.take(train_idx), [rows[i] for i in train_idx])
        record(fitted, every.take(test_idx), [rows[i] for i in test_idx])
    rest = [c for c in corpus if c.ctx.history]
    if rest:
        record(fit_heads(every, rows), featurizer.features(rest), rest)
    return scores


def by_writer_auc(features: CorpusFeatures) -> str:
    """Each corpus file is one writer: heads fitted on the other writers score this one's
    messages. Harder than the 5-fold split (which shares each writer's phrasings between
    folds), and closer to messages from someone new."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from services.router.training.train import fit_heads

    rows, every = features.rows, features.features
    writers = sorted({r.source.rsplit(":", 1)[0] for r in rows})
    group = np.array([writers.index(r.source.rsplit(":", 1)[0]) for r in rows])
    stateful = np.zeros(len(rows))
    crisis = np.zeros(len(rows))
    for g in range(len(writers)):
        test = np.flatnonzero(group == g)
        train = np.flatnonzero(group != g)
        fitted = fit_heads(every.take(train), [rows[i] for i in train])
        stateful[test], crisis[test], _ = fitted.scores(every.take(test))
    y_stateful = np.array([r.expect in ("complex", "safety") for r in rows])
    y_crisis = np.array([r.expect == "safety" for r in rows])
    return (f"leave-one-writer-out ({len(writers)} writers, {len(rows)} messages): AUC "
            f"stateful {roc_auc_score(y_stateful, stateful):.3f}, crisis "
            f"{roc_auc_score(y_crisis, crisis):.3f}")


def curve(router: Router, corpus: Sequence[Case], escalation: Escalation,
          heads: RecordedHeads) -> tuple[list[tuple[float, float, float]], str]:
    """(escalate_at, cheap share, complex recall) on out-of-fold scores, and the crisis
    head's table."""
    points: list[tuple[float, float, float]] = []
    grid = sorted({round(t / 100, 2) for t in range(5, 100, 5)} | {escalation.escalate_at})
    for t in grid:
        at = router.with_escalation(replace(escalation, heads=heads, escalate_at=t))
        f = score(evaluate(at, corpus))
        points.append((t, f["cheap_share"], f["complex_recall"]))
    lines = [("crisis head alone (out-of-fold), by crisis_at: recall on safety messages, "
              "false alarms on the others")]
    safety = [c for c in corpus if c.expect == "safety"]
    others = [c for c in corpus if c.expect != "safety"]
    for t in sorted({0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, escalation.crisis_at}):
        def hit(c: Case, t: float = t) -> bool:
            return heads.scores[router.normalize(c.text).text].crisis >= t
        mark = "  <- configured" if t == escalation.crisis_at else ""
        lines.append(f"  crisis_at {t:4.2f}: recall {sum(map(hit, safety)) / len(safety):.3f}"
                     f", false alarms {sum(map(hit, others)) / len(others):.3f}{mark}")
    lines.append(f"sentence check on messages of {escalation.sentence_min_words}+ words "
                 "(out-of-fold), by sentence_crisis_at: whole router, safety recall and crisis "
                 "false alarms on the corpus")
    for t in sorted({0.5, 0.7, 0.8, 0.9, 0.95, 1.0, escalation.sentence_crisis_at}):
        at = router.with_escalation(replace(escalation, heads=heads, sentence_crisis_at=t))
        outcomes = evaluate(at, corpus)
        safe = [o for o in outcomes if o.case.expect == "safety"]
        calm = [o for o in outcomes if o.case.expect != "safety"]
        mark = "  <- configured" if t == escalation.sentence_crisis_at else ""
        lines.append(f"  sentence_crisis_at {t:4.2f}: safety recall "
                     f"{sum(o.ok for o in safe) / len(safe):.3f}, false alarms "
                     f"{sum(o.decision.crisis for o in calm) / len(calm):.3f}, cheap share "
                     f"{score(outcomes)['cheap_share']:.3f}{mark}")
    return points, "\n".join(lines)


def svg_curve(points: Sequence[tuple[float, float, float]], chosen: float, path: Path) -> None:
    """Cheap share (x) against complex recall (y), one dot per escalate_at."""
    w, h, pad = 520, 380, 60
    xs = [p[1] for p in points]
    ys = [p[2] for p in points]
    x0, x1 = min(xs + [0.85]) - 0.01, 1.0
    y0, y1 = min(ys + [0.9]) - 0.01, 1.0

    def sx(v: float) -> float:
        return pad + (v - x0) / (x1 - x0) * (w - 2 * pad)

    def sy(v: float) -> float:
        return h - pad - (v - y0) / (y1 - y0) * (h - 2 * pad)
    body = [
        (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
         'font-family="sans-serif" font-size="11">'),
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
        (f'<text x="{w / 2}" y="{h - 20}" text-anchor="middle">cheap share of canned + '
         'simple (cost: right is cheaper)</text>'),
        (f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" '
         'text-anchor="middle">complex recall (quality)</text>'),
        (f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="13">router: cost '
         'against quality over escalate_at (5-fold out-of-fold)</text>'),
    ]
    for target_x in (0.90,):
        body.append(f'<line x1="{sx(target_x):.1f}" y1="{pad}" x2="{sx(target_x):.1f}" '
                    f'y2="{h - pad}" stroke="#bbb" stroke-dasharray="4"/>')
    body.append(f'<line x1="{pad}" y1="{sy(0.97):.1f}" x2="{w - pad}" y2="{sy(0.97):.1f}" '
                'stroke="#bbb" stroke-dasharray="4"/>')
    path_d = " ".join(f"{'M' if i == 0 else 'L'}{sx(p[1]):.1f},{sy(p[2]):.1f}"
                      for i, p in enumerate(points))
    body.append(f'<path d="{path_d}" fill="none" stroke="#36c"/>')
    for t, cx, cy in points:
        color = "#d22" if t == chosen else "#36c"
        r = 6 if t == chosen else 3
        body.append(f'<circle cx="{sx(cx):.1f}" cy="{sy(cy):.1f}" r="{r}" fill="{color}"/>')
        if t == chosen or round(t * 100) % 20 == 0:
            label = f"{t:g}" + (" (configured)" if t == chosen else "")
            body.append(f'<text x="{sx(cx) + 6:.1f}" y="{sy(cy) - 6:.1f}">{label}</text>')
    for v in (x0, (x0 + x1) / 2, x1):
        body.append(f'<text x="{sx(v):.1f}" y="{h - pad + 15}" text-anchor="middle">'
                    f'{v:.2f}</text>')
    for v in (y0, (y0 + y1) / 2, y1):
        body.append(f'<text x="{pad - 5}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    body.append("</svg>")
    path.write_text("\n".join(body) + "\n", encoding="utf-8")


def cross_validation(router: Router, show_misses: bool, svg: Path | None) -> str:
    from services.router.training.train import corpus_files

    escalation = router.escalation
    assert escalation is not None
    corpus = load_cases(*corpus_files())
    features = CorpusFeatures.of(corpus)
    heads = RecordedHeads(out_of_fold_opinions(router, corpus, features))
    oof_router = router.with_escalation(replace(escalation, heads=heads))
    text, _ = report(f"corpus, {FOLDS}-fold cross-validation (out-of-fold heads)",
                     evaluate(oof_router, corpus), show_misses)
    points, crisis = curve(router, corpus, escalation, heads)
    lines = [text, "", "cost-quality curve (out-of-fold), by escalate_at:",
             "  escalate_at  cheap_share  complex_recall"]
    for t, cheap, recall in points:
        mark = "  <- configured" if t == escalation.escalate_at else ""
        lines.append(f"  {t:11.2f}  {cheap:11.3f}  {recall:14.3f}{mark}")
    lines += ["", crisis, "", by_writer_auc(features)]
    if svg is not None:
        svg_curve(points, escalation.escalate_at, svg)
        lines.append(f"\ncurve drawn: {svg}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--file", type=Path, action="append",
                        help="labelled JSONL (repeatable): only these, no cross-validation")
    parser.add_argument("--show-misses", action="store_true",
                        help="list every route miss (never the held-out set's)")
    parser.add_argument("--no-cv", action="store_true", help="skip the cross-validation")
    parser.add_argument("--svg", type=Path, help="draw the cost-quality curve here")
    parser.add_argument("--policy", default="optimized", choices=("optimized", "baseline"))
    args = parser.parse_args(argv)
    router = Router.from_files(policy=args.policy)
    quoted: list[tuple[str, list[Case]]]
    if args.file:
        quoted = [(str(p), load_cases(p)) for p in args.file]
    else:
        held = heldout_cases()
        left_out = len(load_cases(HELDOUT)) - len(held)
        title = f"HELD-OUT {HELDOUT.relative_to(REPO)} (less {left_out} texts also in the corpus)"
        quoted = [(title, held)]
        if SHARED_SAMPLE.exists():
            quoted.append(("shared sample " + SHARED_SAMPLE.name, load_cases(SHARED_SAMPLE)))
    all_ok = True
    for title, cases in quoted:
        # The held-out set's misses are never listed: read, they would steer the next change,
        # and its figures would stop saying anything about messages nobody has seen.
        show = args.show_misses and not title.startswith("HELD-OUT")
        text, ok = report(title, evaluate(router, cases), show)
        print(text, end="\n\n")
        all_ok &= ok
    if not args.file:
        text, _ = report("development set " + str(DEV_SET.relative_to(REPO))
                         + " (its misses were read while tuning: not a held-out figure)",
                         evaluate(router, load_cases(DEV_SET)), args.show_misses,
                         confusion=False)
        print(text, end="\n\n")
        text, _ = report("rules' tuning set " + str(RULES_TUNING_SET.relative_to(REPO))
                         + " (for reading only: the word lists were written against it)",
                         evaluate(router, load_cases(RULES_TUNING_SET)), False, confusion=False)
        print(text, end="\n\n")
        if not args.no_cv:
            print(cross_validation(router, args.show_misses, args.svg), end="\n\n")
    print("all targets met" if all_ok else "TARGETS MISSED")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
