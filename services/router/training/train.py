"""Fit the router's learned heads on the corpus and write ``second_opinion.json``.

Usage: ``python -m services.router.training.train [--out FILE] [--check]``
(``make train-router``). Same corpus, same file, byte for byte: the split and the solver are
seeded, and the weights are written rounded, so that a retrain on another machine's BLAS
gives the same bytes. ``--check`` compares with the file in the repository instead of
writing it.

What each head learns from (rows whose meaning needs the coach's last turn are left out:
the rules read those with the coach's turn, the heads only ever see a message alone):

* ``stateful``: complex and safety (1) against canned and simple (0);
* ``crisis``: safety (1) against everything else (0);
* ``stateful_type``: the type of each complex message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.router.classifier.embedding import EmbeddingSource, StaticEmbedder
from services.router.classifier.learned import FORMAT, FeatureSpec, message_features
from services.router.decision import DATA_DIR, Router
from services.router.training.labelled import Case, load_cases

__all__ = [
    "CORPUS_DIR",
    "HELDOUT_DIR",
    "Features",
    "Featurizer",
    "FittedHeads",
    "corpus_files",
    "fit_heads",
    "main",
]

TRAINING_DIR = Path(__file__).resolve().parent
CORPUS_DIR = TRAINING_DIR / "corpus"
HELDOUT_DIR = TRAINING_DIR / "heldout"
OUT_FILE = DATA_DIR / "second_opinion.json"

SEED = 20261207
EMBEDDING = EmbeddingSource(
    package="wordllama", version="0.4.0.post1",
    weights="weights/l2_supercat_256.safetensors",
    tokenizer="tokenizers/l2_supercat_tokenizer_config.json")
BIGRAMS = True
CHAR_NGRAMS = 4
EMBEDDING_SCALE = 4.0
# An n-gram enters the vocabulary once it is in this many training messages: one seen once
# says more about its writer than about messages to come.
MIN_COUNT = 2
# Inverse regularization strength, one for all heads, and classes weighted by their
# rarity (a crisis message is one in ten): chosen by leave-one-writer-out and 5-fold
# cross-validation on the corpus, never on the held-out set (docs/router.md).
C = 1.0
CLASS_WEIGHT = "balanced"
STATEFUL_TYPES = ("ACCOUNTABILITY", "DEEP_COACHING", "GOAL_SETTING", "PATTERN_ANALYSIS",
                  "STRUGGLING")
DECIMALS = 5

Matrix = npt.NDArray[np.float32]
_NUMBER_LIST = re.compile(r"\[\s*([-0-9.e,\s]+?)\s*\]")


def corpus_files() -> list[Path]:
    return sorted(CORPUS_DIR.glob("*.jsonl"))


def spec_for(vocabulary: Sequence[str]) -> FeatureSpec:
    return FeatureSpec(tuple(vocabulary), BIGRAMS, CHAR_NGRAMS, EMBEDDING_SCALE)


@dataclass(frozen=True)
class Features:
    """Messages as the heads see them, before a vocabulary is chosen: the dense part of each
    feature vector and each message's n-grams. The vocabulary is part of a fit (an n-gram
    only a held-out fold uses must not be in it), so the design matrix is built per fit."""

    dense: Matrix  # (messages, dense features)
    ngrams: tuple[tuple[str, ...], ...]

    def take(self, index: Sequence[int] | npt.NDArray[np.int64]) -> Features:
        return Features(self.dense[index], tuple(self.ngrams[i] for i in index))

    def design(self, vocabulary: Sequence[str]) -> Any:
        """The feature vectors over ``vocabulary``, as a sparse matrix (scipy CSR)."""
        from scipy import sparse  # training only

        column = {key: i for i, key in enumerate(vocabulary)}
        rows, cols = [], []
        for i, keys in enumerate(self.ngrams):
            hits = [column[k] for k in keys if k in column]
            rows += [i] * len(hits)
            cols += hits
        flags = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                                  shape=(len(self.ngrams), len(vocabulary)))
        return sparse.hstack([sparse.csr_matrix(self.dense), flags], format="csr")


def vocabulary_of(features: Features) -> tuple[str, ...]:
    counts = Counter(k for keys in features.ngrams for k in keys)
    return tuple(sorted(k for k, n in counts.items() if n >= MIN_COUNT))


@dataclass(frozen=True)
class Featurizer:
    """The run-time features (``message_features``) of many messages at once."""

    router: Router
    embedder: StaticEmbedder

    @classmethod
    def load(cls) -> Featurizer:
        return cls(Router.from_files(second_opinion=False),
                   StaticEmbedder.load(EMBEDDING, TRAINING_DIR / "train.py"))

    def features(self, cases: Sequence[Case]) -> Features:
        spec = spec_for(())
        dense = np.zeros((len(cases), spec.dense_size(self.embedder.dimensions)),
                         dtype=np.float32)
        ngrams: list[tuple[str, ...]] = []
        for i, case in enumerate(cases):
            norm = self.router.normalize(case.text)
            verdict = self.router.classify(case.text, case.ctx.history)
            dense[i], keys = message_features(self.embedder, spec, norm,
                                              self.router.rule_signals(norm, verdict))
            ngrams.append(tuple(keys))
        return Features(dense, tuple(ngrams))


def trainable(cases: Sequence[Case]) -> list[Case]:
    """Rows a head may learn from: those that mean what they say without the coach's turn."""
    return [c for c in cases if not c.ctx.history]


def _logistic(x: Any, y: npt.NDArray[np.int64], seed: int) -> tuple[Matrix, Matrix]:
    from sklearn.linear_model import LogisticRegression  # training only

    model = LogisticRegression(C=C, class_weight=CLASS_WEIGHT, max_iter=5000, tol=1e-6,
                               random_state=seed)
    model.fit(x, y)
    return model.coef_.astype(np.float32), model.intercept_.astype(np.float32)


@dataclass(frozen=True)
class FittedHeads:
    vocabulary: tuple[str, ...]
    stateful: tuple[Matrix, Matrix]
    crisis: tuple[Matrix, Matrix]
    stateful_type: tuple[Matrix, Matrix]

    def scores(self, features: Features) -> tuple[Matrix, Matrix, Matrix]:
        """P(stateful), P(crisis) and the stateful types' probabilities, per message."""
        x = features.design(self.vocabulary)

        def probability(head: tuple[Matrix, Matrix]) -> Matrix:
            z = np.asarray(x @ head[0].T + head[1])
            result: Matrix = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return result
        z = np.asarray(x @ self.stateful_type[0].T + self.stateful_type[1])
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return probability(self.stateful), probability(self.crisis), e / e.sum(axis=1,
                                                                              keepdims=True)


def fit_heads(features: Features, cases: Sequence[Case], seed: int = SEED) -> FittedHeads:
    vocabulary = vocabulary_of(features)
    x = features.design(vocabulary)
    expect = [c.expect for c in cases]
    stateful = np.array([e in ("complex", "safety") for e in expect], dtype=np.int64)
    crisis = np.array([e == "safety" for e in expect], dtype=np.int64)
    complex_rows = [i for i, c in enumerate(cases) if c.expect == "complex"
                    and c.expected_type.removeprefix("MESSAGE_TYPE_") in STATEFUL_TYPES]
    kinds = np.array([STATEFUL_TYPES.index(cases[i].expected_type.removeprefix("MESSAGE_TYPE_"))
                      for i in complex_rows], dtype=np.int64)
    return FittedHeads(vocabulary, _logistic(x, stateful, seed), _logistic(x, crisis, seed),
                       _logistic(x[complex_rows], kinds, seed))


def _rounded(a: Matrix) -> list[float] | list[list[float]]:
    values: list[float] | list[list[float]] = np.round(a.astype(np.float64), DECIMALS).tolist()
    return values


def heads_document(heads: FittedHeads, cases: Sequence[Case], files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    doc = {
        "format": FORMAT,
        "embedding": {"package": EMBEDDING.package, "version": EMBEDDING.version,
                      "weights": EMBEDDING.weights, "tokenizer": EMBEDDING.tokenizer,
                      "dimensions": 256},
        "features": {"bigrams": BIGRAMS, "char_ngrams": CHAR_NGRAMS,
                     "embedding_scale": EMBEDDING_SCALE, "min_count": MIN_COUNT,
                     "vocabulary": list(heads.vocabulary)},
        "trained_on": {"corpus": [p.name for p in files], "corpus_sha256": digest.hexdigest(),
                       "rows": len(cases), "seed": SEED, "C": C,
                       "class_weight": CLASS_WEIGHT,
                       "how": "make train-router (services/router/training/train.py)"},
        "heads": {
            "stateful": {"classes": ["stateful"], "weights": _rounded(heads.stateful[0]),
                         "bias": _rounded(heads.stateful[1])},
            "crisis": {"classes": ["crisis"], "weights": _rounded(heads.crisis[0]),
                       "bias": _rounded(heads.crisis[1])},
            "stateful_type": {"classes": list(STATEFUL_TYPES),
                              "weights": _rounded(heads.stateful_type[0]),
                              "bias": _rounded(heads.stateful_type[1])},
        },
    }
    # Indented, but a list of numbers (a head's row) on one line: a readable, stable file.
    text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + "".join(m.group(1).split()) + "]", text) + "\n"


def build() -> str:
    files = corpus_files()
    cases = trainable(load_cases(*files))
    return heads_document(fit_heads(Featurizer.load().features(cases), cases), cases, files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT_FILE)
    parser.add_argument("--check", action="store_true",
                        help="compare with --out instead of writing it; exit 1 if different")
    args = parser.parse_args(argv)
    document = build()
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == document
        print(f"{args.out}: {'reproduced byte for byte' if same else 'DIFFERS from a retrain'}")
        return 0 if same else 1
    args.out.write_text(document, encoding="utf-8")
    print(f"wrote {args.out} ({len(document):,} bytes) from {len(corpus_files())} corpus files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
