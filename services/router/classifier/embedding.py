"""Sentence embeddings in-process on the CPU: static token vectors, averaged.

The vectors and the tokenizer come inside a PyPI package (``wordllama``: 256 dimensions,
32,000 tokens), read straight from the installed package's files. The package's own loader
is not used: it looks for the shipped tokenizer in a folder that does not exist
(``tokenizer/`` beside the ``tokenizers/`` it ships) and then downloads it from a model hub,
and the router must never open a socket to think. Here the two files are located without
importing the package, and a missing or damaged file stops the router at start with one
line naming it.

An embedding is the mean of the message's token vectors, scaled to unit length: a bag of
subword meanings, cheap (tens of microseconds a message) and robust to typos and slang the
word lists never saw, which is what the learned heads in :mod:`.learned` build on.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from services.router.classifier.datafile import ConfigError
from services.router.classifier.memo import WordMemo

__all__ = ["EmbeddingSource", "StaticEmbedder"]

Vector = npt.NDArray[np.float32]
REMEMBERED_WORDS = 100_000  # words whose token ids are kept (WordMemo)


@dataclass(frozen=True)
class EmbeddingSource:
    """Where the vectors come from: an installed package, its version and two of its files."""

    package: str
    version: str
    weights: str  # path inside the package folder
    tokenizer: str  # path inside the package folder

    def folder(self, data_file: Path) -> Path:
        """The installed package's folder, checked against the version the heads were
        trained with (other vectors would make the heads' weights meaningless)."""
        try:
            installed = importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            installed = ""
        spec = importlib.util.find_spec(self.package)  # locates it without running it
        if not installed or spec is None or not spec.submodule_search_locations:
            raise ConfigError(data_file, "embedding.package",
                              f"{self.package}=={self.version} is not installed "
                              "(pip install -r requirements.txt)")
        if installed != self.version:
            raise ConfigError(data_file, "embedding.version",
                              f"the heads were trained on {self.package}=={self.version}, "
                              f"{installed} is installed: install {self.version} or retrain "
                              "(make train-router)")
        return Path(next(iter(spec.submodule_search_locations)))


class StaticEmbedder:
    """Text -> unit vector (mean of the tokens' static vectors); immutable after loading."""

    def __init__(self, vectors: npt.NDArray[np.float32], tokenizer: Tokenizer) -> None:
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._tokenizer = tokenizer
        self.dimensions = int(self._vectors.shape[1])
        self._word_ids: WordMemo[tuple[int, ...]] = WordMemo(REMEMBERED_WORDS)

    @classmethod
    def load(cls, source: EmbeddingSource, data_file: Path) -> StaticEmbedder:
        """Load from the installed package; raises ConfigError naming a missing or damaged file."""
        folder = source.folder(data_file)
        weights = folder / source.weights
        tokenizer_file = folder / source.tokenizer
        for path in (weights, tokenizer_file):
            if not path.is_file():
                raise ConfigError(path, "(file)", f"file not found (from {source.package} "
                                  f"{source.version}, named in {data_file.name})")
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(weights, "(file)", f"not readable safetensors: {exc}") from None
        if len(tensors) != 1:
            raise ConfigError(weights, "(file)", f"expected one tensor, found {len(tensors)}")
        (matrix,) = tensors.values()
        if matrix.ndim != 2 or matrix.shape[0] < 2 or matrix.shape[1] < 2:
            raise ConfigError(weights, "(file)", f"expected a 2-D matrix, found {matrix.shape}")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # noqa: BLE001 (the tokenizers library raises a bare Exception)
            raise ConfigError(tokenizer_file, "(file)", f"not a tokenizer: {exc}") from None
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if tokenizer.get_vocab_size() > matrix.shape[0]:
            raise ConfigError(tokenizer_file, "(file)", f"{tokenizer.get_vocab_size()} tokens "
                              f"but {matrix.shape[0]} vectors in {weights.name}")
        return cls(matrix.astype(np.float32), tokenizer)

    def embed(self, text: str) -> Vector:
        """The unit-length mean vector of ``text``'s tokens; zeros for text with no token."""
        return self._mean(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def embed_words(self, words: Sequence[str]) -> Vector:
        """``embed(" ".join(words))``, with each word's token ids remembered: the tokenizer
        turns every space into a word-start mark and no merge in its vocabulary crosses one,
        so a text's ids are its words' ids one after another (a test holds this on every
        labelled message). Messages repeat words, so a decision looks up a dozen words
        instead of running the tokenizer (``make bench``: decide's median, docs/router.md)."""
        remembered = self._word_ids
        ids: list[int] = []
        for word in words:
            found = remembered.get(word)
            if found is None:
                found = remembered.remember(
                    word, tuple(self._tokenizer.encode(word, add_special_tokens=False).ids))
            ids.extend(found)
        return self._mean(ids)

    def _mean(self, ids: Sequence[int]) -> Vector:
        if not ids:
            return np.zeros(self.dimensions, dtype=np.float32)
        # The sum points where the mean does; scaled to unit length either way.
        total = self._vectors.take(ids, axis=0).sum(axis=0)  # take: half a fancy index's cost
        norm = float(np.sqrt(total @ total))
        return total / norm if norm > 0.0 else total
