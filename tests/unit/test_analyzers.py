"""The default offline analyzers give sensible answers: sentiment labels on a labelled Portuguese
set (tests/fixtures/sentiment_pt.jsonl: positive, negative, neutral, negation, irony and emoji
cases), emotion and satisfaction that follow the documented rules, and real MiniLM embeddings
in which similar sentences are closer than unrelated ones."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest

from workers.embedding import DIMENSIONS, MiniLM
from workers.sentiment import EMOTIONS, Sentiment, label

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sentiment_pt.jsonl"


@pytest.fixture(scope="module")
def sentiment() -> Sentiment:
    return Sentiment()


@pytest.fixture(scope="module")
def float_minilm() -> MiniLM:
    return MiniLM()


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> MiniLM:
    """The worker's default: the int8-activation copy derived from the packaged model."""
    return MiniLM(quantize=True, cache_dir=tmp_path_factory.mktemp("models"))


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


def test_embeddings_are_unit_384_vectors_and_deterministic(minilm: MiniLM) -> None:
    texts = ["Olá", "Adorei o atendimento", "Olá", "x" * 3000, "🙂"]
    vectors = minilm.embed(texts)
    assert len(vectors) == len(texts)
    for v in vectors:
        assert len(v) == DIMENSIONS
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)
    assert vectors[0] == vectors[2]
    assert minilm.embed(texts) == vectors  # same batch, same vectors
    # int8 activations are scaled per batch: a text's vector moves a little with its batch
    alone = minilm.embed(["Adorei o atendimento"])[0]
    assert _cos(alone, vectors[1]) > 0.98
    assert minilm.embed([]) == []


def test_float_vectors_do_not_depend_on_the_batch(float_minilm: MiniLM) -> None:
    batch = float_minilm.embed(["Olá", "Adorei o atendimento de vocês", "x" * 500])
    alone = float_minilm.embed(["Adorei o atendimento de vocês"])[0]
    assert _cos(alone, batch[1]) > 0.9999


def test_quantized_vectors_stay_close_to_the_float_ones(
    minilm: MiniLM, float_minilm: MiniLM
) -> None:
    assert minilm.quantized and not float_minilm.quantized
    texts = [json.loads(line)["text"] for line in FIXTURE.read_text().splitlines()]
    quantized, exact = minilm.embed(texts), float_minilm.embed(texts)
    similarity = [_cos(a, b) for a, b in zip(quantized, exact, strict=True)]
    assert min(similarity) > 0.95 and sum(similarity) / len(similarity) > 0.98


@pytest.mark.parametrize("which", ["minilm", "float_minilm"])
def test_similar_sentences_are_closer_than_unrelated_ones(
    which: str, request: pytest.FixtureRequest
) -> None:
    minilm: MiniLM = request.getfixturevalue(which)
    """Each sentence's nearest neighbour is its paraphrase. (all-MiniLM-L6-v2 was trained on
    English: in Portuguese it mostly rewards shared words, so these pairs share some.)"""
    pairs = [
        ("Meu pedido ainda não chegou", "Meu pedido não foi entregue"),
        ("Qual o horário de funcionamento da loja?", "Que horas vocês abrem?"),
        ("Quero cancelar minha assinatura", "Como faço para cancelar o plano?"),
        ("Adorei o atendimento", "Gostei muito do atendimento"),
        ("A dog is running in the park", "A puppy plays in the garden"),
    ]
    flat = [t for pair in pairs for t in pair] + ["O boleto vence amanhã"]
    v = dict(zip(flat, minilm.embed(flat), strict=True))
    for a, b in pairs + [(b, a) for a, b in pairs]:
        others = [t for t in flat if t not in (a, b)]
        nearest = max(others, key=lambda t: _cos(v[a], v[t]))
        assert _cos(v[a], v[b]) > _cos(v[a], v[nearest]) + 0.02, (a, b, nearest)
