"""The analyzer interface the actors use, and the provider chosen by ``SENSE_AI_PROVIDER``.

A provider turns texts into ``TextAnalysis`` (sentiment, emotion, satisfaction) and 512-float
embeddings, a batch at a time. Two exist: ``local`` (offline, packaged models: LeIA's rules and
the multilingual USE encoder through a classifier learnt from labelled Portuguese messages,
workers/classifier.py; the same encoder's vectors for search, workers/embedding.py) and
``openai`` (any OpenAI-compatible HTTP API, workers/openai_api.py).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

import numpy as np

from workers.errors import AnalyzerError, BadAnswer, Unavailable
from workers.sentiment import EMOTIONS, TextAnalysis

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = [
    "EMOTIONS",
    "AnalyzerError",
    "BadAnswer",
    "LocalProvider",
    "Provider",
    "TextAnalysis",
    "Unavailable",
    "build_provider",
]


class Provider(Protocol):
    name: str
    version: str  # recorded with each analysis (messages.analyzer)

    def analyze(self, texts: list[str]) -> list[TextAnalysis]: ...

    def embed(self, texts: list[str]) -> list[list[float]]: ...


class LocalProvider:
    """Fully offline: nothing leaves the machine, nothing is downloaded. One encoder serves
    both calls: ``analyze`` keeps the batch's vectors (per thread) for the ``embed`` of the
    same batch that follows it (workers/actors.py), so a message is encoded once."""

    name = "local"

    def __init__(self, threads: int = 1) -> None:
        from threadpoolctl import threadpool_limits

        from workers.classifier import Classifier
        from workers.embedding import Encoder
        from workers.sentiment import Sentiment

        # numpy's BLAS on ``threads`` threads for the whole process (the classifier's products
        # too, not only the encoder's): OpenBLAS's default, a spinning thread per core, took
        # the CPU the worker's other thread and Postgres need (bench/RESULTS.md, "Enrichment")
        threadpool_limits(limits=threads, user_api="blas")
        self.sentiment = Sentiment()
        self.encoder = Encoder(threads)
        self.classifier = Classifier()
        self.version = local_version()
        self._recent = threading.local()

    def _vectors(self, texts: list[str]) -> np.ndarray:
        recent = getattr(self._recent, "batch", None)
        if recent is not None and recent[0] == texts:
            return recent[1]
        vectors = self.encoder.matrix(texts)
        self._recent.batch = (list(texts), vectors)
        return vectors

    def analyze(self, texts: list[str]) -> list[TextAnalysis]:
        """The rules' reading and the multilingual embedding, through the classifier learnt
        from the labelled Portuguese set (workers/classifier.py)."""
        if not texts:
            return []
        rules = self.sentiment.analyze_many(texts)
        return self.classifier.analyze(texts, self._vectors(texts), rules)

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self._vectors(texts).tolist()


def local_version() -> str:
    from workers.classifier import weights_version
    from workers.embedding import MODEL_ID
    from workers.sentiment import RULES_VERSION

    return f"local/{RULES_VERSION}+{weights_version()}+{MODEL_ID}"


def analyzer_version(settings: Settings) -> str:
    """What the configured provider records with each analysis, known without loading it."""
    if settings.ai_provider == "openai":
        return f"openai/{settings.ai_chat_model}+{settings.ai_embedding_model}"
    return local_version()


def build_provider(settings: Settings) -> Provider:
    if settings.ai_provider == "openai":
        from workers.openai_api import OpenAICompatible

        return OpenAICompatible.from_settings(settings)
    return LocalProvider()
