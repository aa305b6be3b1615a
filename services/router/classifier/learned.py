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
message: the heads learn where the word lists are right and where they are not), and the
presence of the words, word pairs and word pieces of a vocabulary learned with the weights
(order and negation, "not finished", "keep saying", which a mean of vectors loses). The weights are a data file (``second_opinion.json``) written
by ``make train-router``; numpy is all it takes to apply them.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from services.router.classifier.datafile import ConfigError
from services.router.classifier.embedding import EmbeddingSource, StaticEmbedder
from services.router.classifier.memo import WordMemo
from services.router.classifier.normalize import NormalizedText
from services.router.classifier.vocabulary import MessageType

__all__ = ["FORMAT", "FeatureSpec", "Heads", "LinearHead", "Opinion", "RuleSignals",
           "SecondOpinion", "VocabularyColumns", "message_features", "ngrams"]

FORMAT = 3
Matrix = npt.NDArray[np.float32]
Columns = npt.NDArray[np.intp]  # indexes of the vocabulary rows a message sets
REMEMBERED_WORDS = 100_000  # words whose columns are kept (WordMemo)


@dataclass(frozen=True)
class FeatureSpec:
    """How a message becomes numbers; saved with the weights so both sides agree.

    The vector: the embedding times ``embedding_scale`` (unit vectors have small entries;
    scaled, one regularization strength suits them and the 0/1 flags alike), a question flag,
    the length, the rules' signals (:data:`RULE_SIGNALS` values), then one presence flag per
    entry of ``vocabulary``: the words, neighbouring word pairs (``bigrams``) and, with
    ``char_ngrams`` n > 0, the n-letter pieces of each word (``#<wor``; they carry a typo or
    an unseen inflection to the word it resembles) seen in at least two training messages.
    An explicit vocabulary rather than a hash table: with thousands of pairs in a few thousand
    buckets, "up" shared its weight with a crisis phrase and pushed "kept up with the gym"
    toward CRISIS (leave-one-writer-out AUC 0.886 hashed, 0.919 with the vocabulary:
    docs/router.md)."""

    vocabulary: tuple[str, ...]
    bigrams: bool
    char_ngrams: int
    embedding_scale: float

    def dense_size(self, dimensions: int) -> int:
        return dimensions + 2 + RULE_SIGNALS

    def size(self, dimensions: int) -> int:
        return self.dense_size(dimensions) + len(self.vocabulary)


@dataclass(frozen=True)
class RuleSignals:
    """What the rules made of the message, as the heads see it."""

    message_type: MessageType
    emotional: bool
    canned_eligible: bool


RULE_SIGNALS = len(MessageType) + 2


def message_features(embedder: StaticEmbedder, spec: FeatureSpec, norm: NormalizedText,
                     rules: RuleSignals) -> tuple[Matrix, list[str]]:
    """The dense part of the feature vector and the message's distinct n-grams (those in
    the vocabulary are the flags set to 1), as training sees them; answering uses the same
    dense part and :class:`VocabularyColumns` (a test holds the two to the same columns)."""
    return dense_features(embedder, spec, norm, rules), ngrams(norm.tokens, spec.bigrams,
                                                               spec.char_ngrams)


def dense_features(embedder: StaticEmbedder, spec: FeatureSpec, norm: NormalizedText,
                   rules: RuleSignals) -> Matrix:
    dims = embedder.dimensions
    dense = np.zeros(spec.dense_size(dims), dtype=np.float32)
    dense[:dims] = embedder.embed_words(norm.tokens) * spec.embedding_scale
    dense[dims] = 1.0 if norm.question else 0.0
    dense[dims + 1] = math.log1p(len(norm.tokens)) / 5.0
    dense[dims + 1 + rules.message_type.value] = 1.0  # values start at 1
    dense[dims + 2 + len(MessageType)] = 1.0 if rules.emotional else 0.0
    dense[dims + 3 + len(MessageType)] = 1.0 if rules.canned_eligible else 0.0
    return dense


def ngrams(tokens: Sequence[str], bigrams: bool, char_ngrams: int) -> list[str]:
    """The message's distinct words, word pairs (``"not finished"``, ``"keep saying"``: order
    and negation, which a mean of vectors loses) and ``#``-prefixed letter n-grams of each
    word between ``<`` and ``>``, in a stable order."""
    keys = list(tokens)
    if bigrams:
        keys += [f"{a} {b}" for a, b in itertools.pairwise(tokens)]
    if char_ngrams > 0:
        n = char_ngrams
        for token in tokens:
            word = f"<{token}>"
            keys += ["#" + word[i:i + n] for i in range(max(1, len(word) - n + 1))]
    return list(dict.fromkeys(keys))


class VocabularyColumns:
    """The vocabulary columns a message sets, as :func:`ngrams` would find them, with each
    word's own columns (the word and its letter n-grams) remembered: messages repeat words,
    so after a few hundred messages a decision looks up a handful of words instead of cutting
    dozens of letter n-grams (``make bench``: decide's median with and without, docs/router.md)."""

    def __init__(self, spec: FeatureSpec) -> None:
        self._spec = spec
        self._column = {key: i for i, key in enumerate(spec.vocabulary)}
        self._words: WordMemo[tuple[int, ...]] = WordMemo(REMEMBERED_WORDS)

    def __len__(self) -> int:
        return len(self._column)

    def _word(self, token: str) -> tuple[int, ...]:
        found = self._words.get(token)
        if found is None:
            column = self._column
            found = self._words.remember(token, tuple(
                column[k] for k in ngrams((token,), False, self._spec.char_ngrams)
                if k in column))
        return found

    def of(self, tokens: Sequence[str]) -> Columns:
        hits: set[int] = set()
        words = self._words
        for token in tokens:
            found = words.get(token)
            hits.update(self._word(token) if found is None else found)
        if self._spec.bigrams and len(tokens) > 1:
            column = self._column
            for a, b in itertools.pairwise(tokens):
                index = column.get(f"{a} {b}")
                if index is not None:
                    hits.add(index)
        # An index array, not a list: numpy would convert a list element by element
        # on every gather, which cost more than the gather itself.
        return np.fromiter(sorted(hits), dtype=np.intp, count=len(hits))


@dataclass(frozen=True)
class LinearHead:
    """Logistic (one class) or softmax (several) over the feature vector."""

    classes: tuple[str, ...]
    weights: Matrix  # (classes, features); one row for a binary head
    bias: Matrix  # (classes,)


@dataclass(frozen=True)
class _StackedHeads:
    """All heads' rows in one matrix, split at the vocabulary: one product for the dense part
    and one gather of the vocabulary rows serve every head (the decision's budget is
    microseconds). Rows: stateful, crisis, then the stateful types."""

    dense: Matrix  # (rows, dense features)
    ngrams: Matrix  # (vocabulary, rows): a message's n-grams are rows to add up
    bias: Matrix  # (rows,)

    @classmethod
    def of(cls, heads: Sequence[LinearHead], width: int) -> _StackedHeads:
        weights = np.vstack([h.weights for h in heads])
        return cls(np.ascontiguousarray(weights[:, :width]),
                   np.ascontiguousarray(weights[:, width:].T),
                   np.concatenate([h.bias for h in heads]))

    def logits(self, dense: Matrix, columns: Columns) -> Matrix:
        z = self.dense @ dense + self.bias
        if len(columns):
            z += self.ngrams.take(columns, axis=0).sum(axis=0)
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
    columns: VocabularyColumns

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
            vocabulary = tuple(feats["vocabulary"])
            if not all(isinstance(k, str) and k for k in vocabulary) \
                    or len(set(vocabulary)) != len(vocabulary):
                raise ValueError("features.vocabulary must be distinct non-empty strings")
            spec = FeatureSpec(vocabulary, bool(feats["bigrams"]), int(feats["char_ngrams"]),
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
                                           heads["stateful_type"]], spec.dense_size(dims)),
                   VocabularyColumns(spec))

    def opinion(self, norm: NormalizedText, rules: RuleSignals) -> Opinion:
        dense = dense_features(self.embedder, self.spec, norm, rules)
        z = self.stacked.logits(dense, self.columns.of(norm.tokens)).tolist()
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
