"""The local analyzer's classifier: polarity, emotion and satisfaction band of a Portuguese
customer message, learnt from the labelled set (tests/fixtures/analysis_pt.jsonl, train split
only: the held-out split is never used to fit it or choose its settings; how it was used is in
bench/RESULTS.md, "Analysis quality").

Features, one row per message:

- the multilingual Universal Sentence Encoder's 512-dim embedding of the text (the search
  embedding too, workers/embedding.py): what the message is about, across wordings;
- the rules' own reading (workers/sentiment.py: LeIA's compound score, the satisfaction, the
  emotion as one-hot);
- the words and word pairs of the accent-folded text, tf-idf weighted (sublinear tf, smoothed
  idf, rows of unit length) over the train split's vocabulary (terms seen in two messages or
  more): the cues a sentence encoder blurs ("só que não", "até agora", "obrigado por nada",
  "nada a reclamar").

Three multinomial logistic regressions on them: polarity, emotion and satisfaction band. They
are fitted by L-BFGS, deterministic from zeros, with the L2 strength chosen by 5-fold
cross-validation on the train split (with scikit-learn's equivalent regression while the
design was chosen; ``python -m workers.classifier --cv`` repeats it here, slowly); the weights
are in ``models/analysis_pt.npz``, made by ``python -m workers.classifier``.

The three outputs are made consistent before they become a ``TextAnalysis``:

- the polarity is the most likely of the polarity model's and the emotion model's (each
  emotion implies one) probabilities together;
- the emotion is the most likely one that fits it (neutro for neutral; alegria or gratidão for
  positive; the others for negative);
- the band is the most likely one it allows (mid for neutral; high or mid for positive; low or
  mid for negative);
- the sentiment is P(positive) - P(negative), the two models' probabilities averaged, kept
  on the polarity's side of ±0.05;
- the satisfaction is a score inside the band (low < 40, mid 40-60, high > 60).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from workers.sentiment import EMOTIONS, TextAnalysis, fold

WEIGHTS = Path(__file__).resolve().parent / "models" / "analysis_pt.npz"
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "analysis_pt.jsonl"
POLARITIES = ("positive", "negative", "neutral")
BANDS = ("low", "mid", "high")
OUTPUTS = {"polarity": POLARITIES, "emotion": EMOTIONS, "satisfaction": BANDS}
RULES_SCALE = 3.0  # the rules' features against the unit-length embedding and term rows
# the emotions each polarity allows, in EMOTIONS order (a tie goes to the first)
FITS = {"neutral": ("neutro",), "positive": ("alegria", "gratidão")}
NEGATIVE = tuple(e for e in EMOTIONS if e not in FITS["neutral"] + FITS["positive"])
BANDS_OF = {"neutral": ("mid",), "positive": ("high", "mid"), "negative": ("low", "mid")}
# the inverse L2 strength C of a loss summed over the messages (scikit-learn's convention),
# chosen by 5-fold cross-validation on the train split: 10, 30 and 100 were within 0.5 point
C_CHOSEN = {"polarity": 30.0, "emotion": 30.0, "satisfaction": 30.0}
C_GRID = (10.0, 30.0, 100.0)
MIN_DF = 2
_TOKEN = re.compile(r"\w+|[!?]+")


def polarity_of(emotion: str) -> str:
    for pol, fits in FITS.items():
        if emotion in fits:
            return pol
    return "negative"


def rule_features(analyses: list[TextAnalysis]) -> np.ndarray:
    rows = [
        [a.sentiment, a.satisfaction / 100.0, *(float(a.emotion == e) for e in EMOTIONS)]
        for a in analyses
    ]
    return np.asarray(rows, dtype=np.float32).reshape(len(analyses), 2 + len(EMOTIONS))


def terms(text: str) -> list[str]:
    """The words of the accent-folded text (and runs of ! or ?), and each adjacent pair."""
    words = _TOKEN.findall(fold(text))
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


class Terms:
    """tf-idf rows over a fixed vocabulary (term → column, with its idf)."""

    def __init__(self, vocabulary: list[str], idf: np.ndarray) -> None:
        self.vocabulary = vocabulary
        self.column = {t: i for i, t in enumerate(vocabulary)}
        self.idf = np.asarray(idf, dtype=np.float32)

    @classmethod
    def learn(cls, texts: list[str], min_df: int = MIN_DF) -> Terms:
        df: dict[str, int] = {}
        for text in texts:
            for t in set(terms(text)):
                df[t] = df.get(t, 0) + 1
        vocabulary = sorted(t for t, n in df.items() if n >= min_df)
        counts = np.asarray([df[t] for t in vocabulary], dtype=np.float64)
        return cls(vocabulary, np.log((1 + len(texts)) / (1 + counts)) + 1)

    def matrix(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.vocabulary)), dtype=np.float32)
        for i, text in enumerate(texts):
            tf: dict[int, int] = {}
            for t in terms(text):
                j = self.column.get(t)
                if j is not None:
                    tf[j] = tf.get(j, 0) + 1
            if tf:
                cols = np.fromiter(tf.keys(), dtype=np.int64, count=len(tf))
                counts = np.fromiter(tf.values(), dtype=np.float32, count=len(tf))
                row = (1 + np.log(counts)) * self.idf[cols]
                out[i, cols] = row / np.linalg.norm(row)
        return out


def features(embeddings: np.ndarray, analyses: list[TextAnalysis], term_rows: np.ndarray) -> Any:
    return np.hstack([embeddings, RULES_SCALE * rule_features(analyses), term_rows])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _version(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return "clf-" + digest.hexdigest()[:8]


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


@functools.cache
def weights_version(path: Path = WEIGHTS) -> str:
    """``clf-`` and a hash of the weights: a retrained model is a new analyzer version."""
    return _version(_load(path))


class Classifier:
    def __init__(self, path: Path = WEIGHTS) -> None:
        arrays = _load(path)
        self.version = _version(arrays)
        self.meta: dict[str, Any] = json.loads(str(arrays["meta"]))
        self.terms = Terms([str(t) for t in arrays["vocabulary"]], arrays["idf"])
        self.models = {
            name: (arrays[f"{name}_W"].astype(np.float32), arrays[f"{name}_b"].astype(np.float32))
            for name in OUTPUTS
        }

    def probabilities(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {name: _softmax(x @ w + b) for name, (w, b) in self.models.items()}

    def analyze(
        self, texts: list[str], embeddings: np.ndarray, rules: list[TextAnalysis]
    ) -> list[TextAnalysis]:
        return self.analyses(features(embeddings, rules, self.terms.matrix(texts)))

    def analyses(self, x: np.ndarray) -> list[TextAnalysis]:
        p = self.probabilities(x)
        pol_p = p["polarity"] + emotion_polarity(p["emotion"])
        out = []
        for i in range(len(x)):
            pol = POLARITIES[int(pol_p[i].argmax())]
            fits = FITS.get(pol, NEGATIVE)
            emotion = max(fits, key=lambda e: p["emotion"][i][EMOTIONS.index(e)])
            band = max(BANDS_OF[pol], key=lambda b: p["satisfaction"][i][BANDS.index(b)])
            s = float(pol_p[i][0] - pol_p[i][1]) / 2
            if pol == "positive":
                s = max(s, 0.06)
            elif pol == "negative":
                s = min(s, -0.06)
            else:
                s = min(max(s, -0.04), 0.04)
            out.append(TextAnalysis(round(s, 4), emotion, satisfaction_in(band, s)))
        return out


def emotion_polarity(p_emotion: np.ndarray) -> np.ndarray:
    """P(polarity) implied by the emotion probabilities (columns as POLARITIES)."""
    out = np.zeros((len(p_emotion), len(POLARITIES)), dtype=p_emotion.dtype)
    for j, e in enumerate(EMOTIONS):
        out[:, POLARITIES.index(polarity_of(e))] += p_emotion[:, j]
    return out


def satisfaction_in(band: str, sentiment: float) -> int:
    """A 0-100 score inside ``band``, higher the more positive the sentiment."""
    strength = min(abs(sentiment), 1.0)
    if band == "low":
        return round(39 - 34 * strength)
    if band == "high":
        return round(61 + 34 * strength)
    return round(50 + 10 * max(min(sentiment, 1.0), -1.0))


# training (python -m workers.classifier) -------------------------------------------------


def lbfgs(
    f: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x: np.ndarray,
    iterations: int = 500,
    memory: int = 10,
    tolerance: float = 1e-6,
) -> np.ndarray:
    """Minimise a smooth convex ``f`` (value and gradient) by L-BFGS with a backtracking
    (Armijo) line search."""
    value, grad = f(x)
    ss: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for _ in range(iterations):
        if np.abs(grad).max() < tolerance:
            break
        q = grad.copy()
        alphas = []
        for s, y in zip(reversed(ss), reversed(ys), strict=True):
            a = (s @ q) / (y @ s)
            alphas.append(a)
            q -= a * y
        if ss:
            q *= (ss[-1] @ ys[-1]) / (ys[-1] @ ys[-1])
        for (s, y), a in zip(zip(ss, ys, strict=True), reversed(alphas), strict=True):
            q += s * (a - (y @ q) / (y @ s))
        direction = -q
        slope = grad @ direction
        if slope >= 0:  # not a descent direction: restart from the gradient
            ss, ys, direction, slope = [], [], -grad, -(grad @ grad)
        step = 1.0
        while True:
            new = x + step * direction
            new_value, new_grad = f(new)
            if new_value <= value + 1e-4 * step * slope or step < 1e-10:
                break
            step /= 2
        s, y = new - x, new_grad - grad
        if y @ s > 1e-12:
            ss.append(s)
            ys.append(y)
            if len(ss) > memory:
                ss.pop(0)
                ys.pop(0)
        improved = value - new_value
        x, value, grad = new, new_value, new_grad
        if improved < tolerance * max(1.0, abs(value)) * 1e-3:
            break
    return x


def fit(x: np.ndarray, y: np.ndarray, classes: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression: mean cross-entropy + ||W||² / (2·C·n) (no penalty on
    the intercepts), from zeros."""
    xd = x.astype(np.float64)
    n, d = xd.shape
    targets = np.eye(classes)[y]
    l2 = 1.0 / (c * n)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: d * classes].reshape(d, classes)
        b = theta[d * classes :]
        z = xd @ w + b
        z -= z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        value = -(targets * log_p).sum() / n + 0.5 * l2 * (w * w).sum()
        g = (np.exp(log_p) - targets) / n
        grad = np.concatenate([(xd.T @ g + l2 * w).ravel(), g.sum(axis=0)])
        return float(value), grad

    theta = lbfgs(loss, np.zeros(d * classes + classes))
    return theta[: d * classes].reshape(d, classes), theta[d * classes :]


def _labels(rows: list[dict[str, Any]], name: str) -> np.ndarray:
    return np.asarray([OUTPUTS[name].index(r[name]) for r in rows])


def cross_validate(
    texts: list[str],
    embeddings: np.ndarray,
    analyses: list[TextAnalysis],
    rows: list[dict[str, Any]],
) -> dict[str, dict[float, float]]:
    """5-fold accuracy of each output for each C in C_GRID (the vocabulary learnt on the
    training folds only)."""
    folds = np.random.default_rng(0).permutation(len(texts)) % 5
    right: dict[str, dict[float, int]] = {name: dict.fromkeys(C_GRID, 0) for name in OUTPUTS}
    for f in range(5):
        train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        vocab = Terms.learn([texts[i] for i in train])
        x = features(embeddings, analyses, vocab.matrix(texts))
        for name, classes in OUTPUTS.items():
            y = _labels(rows, name)
            for c in C_GRID:
                w, b = fit(x[train], y[train], len(classes), c)
                right[name][c] += int(((x[test] @ w + b).argmax(axis=1) == y[test]).sum())
    return {name: {c: n / len(texts) for c, n in cs.items()} for name, cs in right.items()}


def main() -> None:
    from workers.embedding import Encoder
    from workers.sentiment import Sentiment

    parser = argparse.ArgumentParser(description="fit the classifier on the train split")
    parser.add_argument("--cv", action="store_true", help="cross-validate the L2 strengths")
    args = parser.parse_args()
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "train"]  # never the held-out split
    texts = [r["text"] for r in rows]
    analyses = Sentiment().analyze_many(texts)
    embeddings = Encoder().matrix(texts)
    if args.cv:
        for name, scores in cross_validate(texts, embeddings, analyses, rows).items():
            print(name, {c: round(100 * a, 1) for c, a in scores.items()})
        return
    vocab = Terms.learn(texts)
    x = features(embeddings, analyses, vocab.matrix(texts))
    arrays: dict[str, np.ndarray] = {
        "vocabulary": np.asarray(vocab.vocabulary),
        "idf": vocab.idf,
    }
    for name, classes in OUTPUTS.items():
        w, b = fit(x, _labels(rows, name), len(classes), C_CHOSEN[name])
        arrays[f"{name}_W"] = w.astype(np.float32)
        arrays[f"{name}_b"] = b.astype(np.float32)
    meta = {
        "trained_on": f"{FIXTURE.name} train split, {len(rows)} messages",
        "C": C_CHOSEN,
        "outputs": {name: list(classes) for name, classes in OUTPUTS.items()},
    }
    arrays["meta"] = np.asarray(json.dumps(meta, ensure_ascii=False))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    WEIGHTS.parent.mkdir(exist_ok=True)
    WEIGHTS.write_bytes(buffer.getvalue())
    print(f"{WEIGHTS.name}: {len(vocab.vocabulary)} terms, {_version(arrays)}")


if __name__ == "__main__":
    main()
