"""The analyzer interface the actors use, and the provider chosen by ``SENSE_AI_PROVIDER``.

A provider turns texts into ``TextAnalysis`` (sentiment, emotion, satisfaction) and 384-float
embeddings, a batch at a time. Two exist: ``local`` (offline, packaged models: LeIA's rules
and the multilingual USE encoder through a classifier learnt from labelled Portuguese
messages for the analysis, workers/classifier.py; MiniLM on onnxruntime for the search
embedding) and ``openai`` (any OpenAI-compatible HTTP API, workers/openai_api.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

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
    """Fully offline: nothing leaves the machine, nothing is downloaded."""

    name = "local"

    def __init__(
        self, intra_op_threads: int = 1, *, quantize: bool = False, cache_dir: Path | None = None
    ) -> None:
        from workers.classifier import Classifier, Encoder
        from workers.embedding import MiniLM
        from workers.sentiment import Sentiment

        self.sentiment = Sentiment()
        self.encoder = Encoder(intra_op_threads)
        self.classifier = Classifier()
        self.embedder = MiniLM(intra_op_threads, quantize=quantize, cache_dir=cache_dir)
        self.version = local_version(quantize)

    def analyze(self, texts: list[str]) -> list[TextAnalysis]:
        """The rules' reading and the multilingual embedding, through the classifier learnt
        from the labelled Portuguese set (workers/classifier.py)."""
        from workers.classifier import features

        if not texts:
            return []
        rules = self.sentiment.analyze_many(texts)
        return self.classifier.analyses(features(self.encoder.embed(texts), rules))

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed(texts)


def local_version(quantize: bool) -> str:
    from workers.classifier import weights_version
    from workers.embedding import MODEL_ID
    from workers.sentiment import RULES_VERSION

    return f"local/{RULES_VERSION}+{weights_version()}+{MODEL_ID}{'-int8' if quantize else ''}"


def analyzer_version(settings: Settings) -> str:
    """What the configured provider records with each analysis, known without loading it."""
    if settings.ai_provider == "openai":
        return f"openai/{settings.ai_chat_model}+{settings.ai_embedding_model}"
    return local_version(settings.ai_local_quantize)


def build_provider(settings: Settings) -> Provider:
    if settings.ai_provider == "openai":
        from workers.openai_api import OpenAICompatible

        return OpenAICompatible.from_settings(settings)
    return LocalProvider(
        quantize=settings.ai_local_quantize, cache_dir=settings.data_path / "models"
    )
