"""The learned second opinion: linear heads over a message's embedding and its word pairs.

Word lists say what they were written against; a model trained on thousands of labelled
messages in many voices generalizes further. Three heads share one feature vector:

* ``stateful`` — P(the message needs the coach's memory and judgement). The router asks it
  only about messages its rules would send to the cheap tier, and only to escalate.
* ``crisis`` — P(signs of self-harm, suicidal ideation or disordered eating). Asked about
  every message the rules did not already call a crisis, and only to add CRISIS.
* ``stateful_type`` — which stateful type (accountability, goal setting, pattern analysis,
  deep coaching, struggling) a message it escalates is, since the rules' type for it (a
  question, a check-in) was the cheap tier's.

Features (:func:`message_features`): the unit-length embedding of the normalized text
(:mod:`.embedding`), whether it asks a question and how long it is, what the rules made of
it (their type, whether it speaks of feelings, whether it is a whole canned-eligible
message: the heads learn where the word lists are right and where they are not), and word
and word-pair presence hashed into a fixed table (order and negation, "not finished", "keep
saying", which a mean of vectors loses). The weights are a data file (``second_opinion.json``) written
by ``make train-router``; numpy is all it takes to apply them.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from services.router.classifier.datafile import ConfigError
from services.router.classifier.embedding import EmbeddingSource, StaticEmbedder
from services.router.classifier.normalize import NormalizedText
from services.router.classifier.vocabulary import MessageType

__all__ = ["FORMAT", "FeatureSpec", "Heads", "LinearHead", "Opinion", "RuleSignals",
           "SecondOpinion", "hashed_words", "message_features"]

FORMAT = 2
Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FeatureSpec:
    """How a message becomes numbers; saved with the weights so both sides agree.

    The vector: the embedding times ``embedding_scale`` (unit vectors have small entries;
    scaled, one regularization strength suits them and the 0/1 flags alike), a question flag,
    the length, the rules' signals (:data:`RULE_SIGNALS` values), then ``hash_buckets`` word
    (and word-pair) presence flags."""

    hash_buckets: int
    bigrams: bool
    embedding_scale: float

    def dense_size(self, dimensions: int) -> int:
        return dimensions + 2 + RULE_SIGNALS

    def size(self, dimensions: int) -> int:
        return self.dense_size(dimensions) + self.hash_buckets


@dataclass(frozen=True)
class RuleSignals:
    """What the rules made of the message, as the heads see it."""

    message_type: MessageType
    emotional: bool
    canned_eligible: bool


RULE_SIGNALS = len(MessageType) + 2


def message_features(embedder: StaticEmbedder, spec: FeatureSpec, norm: NormalizedText,
                     rules: RuleSignals) -> tuple[Matrix, list[int]]:
    """The dense part of the feature vector and the hashed word buckets set to 1 (the rest of
    the table is 0): one function for training and for answering, so the two agree."""
    dims = embedder.dimensions
    dense = np.zeros(spec.dense_size(dims), dtype=np.float32)
    dense[:dims] = embedder.embed(norm.text) * spec.embedding_scale
    dense[dims] = 1.0 if norm.question else 0.0
    dense[dims + 1] = math.log1p(len(norm.tokens)) / 5.0
    dense[dims + 1 + rules.message_type.value] = 1.0  # values start at 1
    dense[dims + 2 + len(MessageType)] = 1.0 if rules.emotional else 0.0
    dense[dims + 3 + len(MessageType)] = 1.0 if rules.canned_eligible else 0.0
    return dense, hashed_words(norm.tokens, spec)


def hashed_words(tokens: Sequence[str], spec: FeatureSpec) -> list[int]:
    """Distinct hash buckets of the message's words (and neighbouring pairs): crc32 is stable
    across processes and machines, unlike ``hash()``."""
    buckets = spec.hash_buckets
    keys = list(tokens)
    if spec.bigrams:
        keys += [f"{a} {b}" for a, b in itertools.pairwise(tokens)]
    return sorted({zlib.crc32(k.encode("utf-8")) % buckets for k in keys})


@dataclass(frozen=True)
class LinearHead:
    """Logistic (one class) or softmax (several) over the feature vector."""

    classes: tuple[str, ...]
    weights: Matrix  # (classes, features); one row for a binary head
    bias: Matrix  # (classes,)


@dataclass(frozen=True)
class _StackedHeads:
    """All heads' rows in one matrix, split at the hash table: one product for the dense part
    and one gather of the hash rows serve every head (the decision's budget is microseconds).
    Rows: stateful, crisis, then the stateful types."""

    dense: Matrix  # (rows, dense features)
    hashed: Matrix  # (hash buckets, rows): a message's buckets are rows to add up
    bias: Matrix  # (rows,)

    @classmethod
    def of(cls, heads: Sequence[LinearHead], width: int) -> _StackedHeads:
        weights = np.vstack([h.weights for h in heads])
        return cls(np.ascontiguousarray(weights[:, :width]),
                   np.ascontiguousarray(weights[:, width:].T),
                   np.concatenate([h.bias for h in heads]))

    def logits(self, dense: Matrix, buckets: Sequence[int]) -> Matrix:
        z = self.dense @ dense + self.bias
        if buckets:
            z += self.hashed[buckets].sum(axis=0)
        return z


@dataclass(frozen=True)
class Opinion:
    """The heads' view of one message."""

    stateful: float
    crisis: float
    stateful_type: MessageType
    stateful_type_probability: float


class Heads(Protocol):
    """What the router asks of the learned layer (the evaluation swaps in recorded scores)."""

    def opinion(self, norm: NormalizedText, rules: RuleSignals) -> Opinion: ...


@dataclass(frozen=True)
class SecondOpinion:
    """The loaded heads and their embedder; build with :meth:`load`, then :meth:`opinion`."""

    embedder: StaticEmbedder
    spec: FeatureSpec
    stateful: LinearHead
    crisis: LinearHead
    stateful_type: LinearHead
    path: Path
    stacked: _StackedHeads

    @classmethod
    def load(cls, path: Path) -> SecondOpinion:
        """Read ``second_opinion.json`` and the embedding it names; ConfigError naming the
        file on anything missing, damaged or inconsistent."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(path, "(file)", "file not found (make train-router writes it)") \
                from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(path, "(file)", f"not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ConfigError(path, "format", f"must be {FORMAT} (retrain: make train-router)")
        try:
            emb = raw["embedding"]
            source = EmbeddingSource(str(emb["package"]), str(emb["version"]),
                                     str(emb["weights"]), str(emb["tokenizer"]))
            feats = raw["features"]
            spec = FeatureSpec(int(feats["hash_buckets"]), bool(feats["bigrams"]),
                               float(feats["embedding_scale"]))
            dims = int(emb["dimensions"])
            heads = {name: _head(raw["heads"][name], spec.size(dims), name)
                     for name in ("stateful", "crisis", "stateful_type")}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(path, "heads", f"malformed: {exc!r}") from None
        for name in heads["stateful_type"].classes:
            if name not in MessageType.__members__:
                raise ConfigError(path, "heads.stateful_type.classes",
                                  f"unknown message type {name!r}")
        embedder = StaticEmbedder.load(source, path)
        if embedder.dimensions != dims:
            raise ConfigError(path, "embedding.dimensions",
                              f"{dims}, but the vectors have {embedder.dimensions}")
        return cls(embedder, spec, heads["stateful"], heads["crisis"], heads["stateful_type"],
                   path, _StackedHeads.of([heads["stateful"], heads["crisis"],
                                           heads["stateful_type"]], spec.dense_size(dims)))

    def opinion(self, norm: NormalizedText, rules: RuleSignals) -> Opinion:
        dense, buckets = message_features(self.embedder, self.spec, norm, rules)
        z = self.stacked.logits(dense, buckets).tolist()
        kinds = z[2:]
        best = max(range(len(kinds)), key=kinds.__getitem__)
        top = kinds[best]
        share = 1.0 / sum(math.exp(k - top) for k in kinds)  # softmax of the best
        return Opinion(_sigmoid(z[0]), _sigmoid(z[1]),
                       MessageType[self.stateful_type.classes[best]], share)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _head(node: Mapping[str, Any], size: int, name: str) -> LinearHead:
    classes = tuple(str(c) for c in node["classes"])
    weights = np.asarray(node["weights"], dtype=np.float32)
    bias = np.asarray(node["bias"], dtype=np.float32)
    rows = 1 if len(classes) == 1 else len(classes)
    if weights.shape != (rows, size) or bias.shape != (rows,):
        raise ValueError(f"head {name}: weights {weights.shape}, bias {bias.shape}; "
                         f"expected ({rows}, {size}) and ({rows},)")
    if not np.all(np.isfinite(weights)) or not np.all(np.isfinite(bias)):
        raise ValueError(f"head {name}: weights are not all finite")
    return LinearHead(classes, weights, bias)
