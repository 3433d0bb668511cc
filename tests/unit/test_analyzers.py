"""The default offline analyzers give sensible answers: sentiment labels on a labelled Portuguese
set (tests/fixtures/sentiment_pt.jsonl: positive, negative, neutral, negation, irony and emoji
cases), emotion and satisfaction that follow the documented rules, and real multilingual
embeddings (USE-m) in which Portuguese paraphrases are closer than unrelated sentences."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest

from workers.embedding import DIMENSIONS, Encoder
from workers.sentiment import EMOTIONS, Sentiment, label

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sentiment_pt.jsonl"


@pytest.fixture(scope="module")
def sentiment() -> Sentiment:
    return Sentiment()


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder()


def _cases() -> list[dict[str, str]]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def _accuracy(cases: list[dict[str, str]], predict: object) -> tuple[float, dict[str, str]]:
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for case in cases:
        by_kind[case["kind"]].append(predict(case["text"]) == case["label"])  # type: ignore[operator]
    hits = [h for v in by_kind.values() for h in v]
    detail = {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_kind.items())}
    return sum(hits) / len(hits), detail


def test_sentiment_accuracy_on_the_labelled_set(sentiment: Sentiment) -> None:
    from LeIA import SentimentIntensityAnalyzer

    raw = SentimentIntensityAnalyzer()
    cases = _cases()
    kinds = {c["kind"] for c in cases}
    assert {"plain", "negation", "irony", "emoji"} <= kinds
    assert {c["label"] for c in cases} == {"positive", "negative", "neutral"}
    report = []
    for split in ("dev", "holdout"):
        subset = [c for c in cases if c.get("split", "dev") == split]
        ours, detail = _accuracy(subset, lambda t: label(sentiment.analyze(t).sentiment))
        leia, _ = _accuracy(subset, lambda t: label(raw.polarity_scores(t)["compound"]))
        report.append(f"{split} ({len(subset)}): {ours:.1%} {detail}; LeIA alone {leia:.1%}")
        # the dev part shaped the rules; the holdout part was written after them, unseen
        floor = 0.9 if split == "dev" else 0.65
        assert ours >= floor, "; ".join(report)
        assert ours > leia + 0.1, "; ".join(report)
    print("\nsentiment accuracy: " + " | ".join(report))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Não gostei do atendimento", "negative"),  # LeIA alone says positive
        ("Nunca fui tão bem atendido", "positive"),
        ("Chegou certinho 👍", "positive"),  # LeIA alone drops emojis
        ("Pior compra da minha vida 😡", "negative"),
        ("Excelente atendimento, só que não", "negative"),
        ("Ok", "neutral"),
        ("Bom dia, tudo bem?", "neutral"),
    ],
)
def test_negation_emoji_irony_and_formulae(sentiment: Sentiment, text: str, expected: str) -> None:
    assert label(sentiment.analyze(text).sentiment) == expected


def test_emotion_and_satisfaction_follow_the_rules(sentiment: Sentiment) -> None:
    thanks = sentiment.analyze("Adorei, muito obrigado!")
    assert thanks.emotion == "gratidão" and thanks.satisfaction >= 80
    joy = sentiment.analyze("Amei o presente, ficou lindo")
    assert joy.emotion == "alegria" and joy.satisfaction > 70
    anger = sentiment.analyze("Isso é um absurdo, que vergonha")
    assert anger.emotion == "raiva" and anger.satisfaction < 30
    sad = sentiment.analyze("Fiquei muito triste com a entrega")
    assert sad.emotion == "tristeza" and sad.satisfaction < 50
    question = sentiment.analyze("Qual o horário de funcionamento?")
    assert (question.emotion, question.satisfaction, question.sentiment) == ("neutro", 50, 0.0)
    # a polite complaint is still an unhappy customer: capped at 35
    polite = sentiment.analyze("Por favor, ainda não recebi meu pedido")
    assert polite.sentiment < 0 and polite.satisfaction <= 35
    resolved = sentiment.analyze("Resolvido, obrigado pela ajuda")
    assert resolved.satisfaction >= 70 and resolved.emotion == "gratidão"
    for text in ("kkkkk", "😂😂", "!!!", "ÓTIMO!!!", "a" * 5000, "\u200b", "123"):
        out = sentiment.analyze(text)
        assert -1 <= out.sentiment <= 1 and 0 <= out.satisfaction <= 100
        assert out.emotion in EMOTIONS


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_unit_vectors_and_deterministic(encoder: Encoder) -> None:
    texts = ["Olá", "Adorei o atendimento", "Olá", "x" * 3000, "🙂"]
    vectors = encoder.embed(texts)
    assert len(vectors) == len(texts)
    for v in vectors:
        assert len(v) == DIMENSIONS
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)
    assert vectors[0] == vectors[2]
    assert encoder.embed(texts) == vectors  # same batch, same vectors
    alone = encoder.embed(["Adorei o atendimento"])[0]
    assert _cos(alone, vectors[1]) > 0.999  # a text's vector does not depend on its batch
    assert encoder.embed([]) == []


def test_the_encoder_holds_blas_to_its_own_threads(encoder: Encoder) -> None:
    """Its matrix products run on one BLAS thread, not one spinning thread per core."""
    from threadpoolctl import threadpool_info

    seen: list[int] = []
    backend = encoder.model._model
    forward = backend._encode_batch

    def watched(*args: object) -> None:
        seen.extend(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")
        forward(*args)

    backend._encode_batch = watched
    try:
        encoder.embed(["Quero cancelar minha assinatura"])
    finally:
        del backend._encode_batch
    assert seen and set(seen) == {1}


def test_the_local_provider_holds_blas_to_one_thread_for_the_whole_analysis() -> None:
    """The classifier's products run outside the encoder's own limit: the provider sets it
    for the process."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from workers.provider import LocalProvider

    with threadpool_limits(limits=2, user_api="blas"):  # as OpenBLAS starts on 2+ cores
        provider = LocalProvider()
        seen: list[int] = []
        analyses = provider.classifier.analyses

        def watched(x: object) -> object:
            blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
            seen.extend(lib["num_threads"] for lib in blas)
            return analyses(x)  # type: ignore[arg-type]

        provider.classifier.analyses = watched  # type: ignore[method-assign]
        provider.analyze(["o pedido chegou certinho, obrigado"])
    assert seen and set(seen) == {1}


def test_portuguese_paraphrases_are_closer_than_unrelated_sentences(encoder: Encoder) -> None:
    """Each sentence's nearest neighbour is its paraphrase; four of the five pairs share no
    word (the English MiniLM this replaced ranked Portuguese mostly by shared words)."""
    pairs = [
        ("Cadê meu pedido?", "Minha encomenda ainda não chegou"),
        ("Qual o horário de funcionamento da loja?", "Que horas vocês abrem?"),
        ("Quero cancelar minha assinatura", "Como faço para cancelar o plano?"),
        ("Adorei o atendimento", "Fui muito bem tratado pela equipe"),
        ("O boleto vence amanhã", "A fatura tem vencimento no dia seguinte"),
    ]
    flat = [t for pair in pairs for t in pair] + ["Vocês entregam no sábado?"]
    v = dict(zip(flat, encoder.embed(flat), strict=True))
    for a, b in pairs + [(b, a) for a, b in pairs]:
        others = [t for t in flat if t not in (a, b)]
        nearest = max(others, key=lambda t: _cos(v[a], v[t]))
        assert _cos(v[a], v[b]) > _cos(v[a], v[nearest]), (a, b, nearest)
