"""The local analyzer's classifier: polarity, emotion and satisfaction band of a Portuguese
customer message, learnt from the labelled set (tests/fixtures/analysis_pt.jsonl, train split
only; the held-out split is never used to fit or tune it).

Features: the multilingual Universal Sentence Encoder's 512-dim embedding of the text (the
search embedding too, workers/embedding.py) and the rules' own reading
(workers/sentiment.py: LeIA's compound score, the satisfaction, the emotion as one-hot).
One multinomial logistic regression for the polarity and one for the emotion; weights in
``models/analysis_pt.json``, made by ``python -m workers.classifier`` (deterministic:
full-batch gradient descent from zeros, the L2 strength of each chosen by 5-fold
cross-validation on the train split).

The three outputs are made consistent before they become a ``TextAnalysis``: the emotion is
the most likely one that fits the polarity (neutro for neutral; alegria or gratidão for
positive; the others for negative); the sentiment is P(positive) - P(negative), kept on the
predicted polarity's side of ±0.05; the satisfaction is the expected band score, kept inside
the predicted band (low < 40, mid 40-60, high > 60).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from workers.embedding import Encoder
from workers.sentiment import EMOTIONS, TextAnalysis

WEIGHTS = Path(__file__).resolve().parent / "models" / "analysis_pt.json"
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "analysis_pt.jsonl"
POLARITIES = ("positive", "negative", "neutral")
BANDS = ("low", "mid", "high")
OUTPUTS = {"polarity": POLARITIES, "emotion": EMOTIONS}
RULES_SCALE = 3.0  # the rules' features against the unit-length embedding
FITS = {"neutral": {"neutro"}, "positive": {"alegria", "gratidão"}}


def rule_features(analyses: list[TextAnalysis]) -> np.ndarray:
    rows = [
        [a.sentiment, a.satisfaction / 100.0, *(float(a.emotion == e) for e in EMOTIONS)]
        for a in analyses
    ]
    return np.asarray(rows, dtype=np.float32).reshape(len(analyses), 2 + len(EMOTIONS))


def features(embeddings: np.ndarray, analyses: list[TextAnalysis]) -> np.ndarray:
    return np.hstack([embeddings, RULES_SCALE * rule_features(analyses)])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _version(raw: bytes) -> str:
    return "clf-" + hashlib.sha256(raw).hexdigest()[:8]


@functools.cache
def weights_version(path: Path = WEIGHTS) -> str:
    """``clf-`` and the weights file's hash: a retrained model is a new analyzer version."""
    return _version(path.read_bytes())


class Classifier:
    def __init__(self, path: Path = WEIGHTS) -> None:
        raw = path.read_bytes()
        self.version = _version(raw)
        doc = json.loads(raw)
        self.models = {
            name: (np.asarray(m["W"], dtype=np.float32), np.asarray(m["b"], dtype=np.float32))
            for name, m in doc["outputs"].items()
        }
        self.bands: dict[str, str] = doc["bands"]

    def probabilities(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {name: _softmax(x @ w + b) for name, (w, b) in self.models.items()}

    def analyses(self, x: np.ndarray) -> list[TextAnalysis]:
        p = self.probabilities(x)
        out = []
        for i in range(len(x)):
            pol = POLARITIES[int(p["polarity"][i].argmax())]
            fits = FITS.get(pol, set(EMOTIONS) - FITS["neutral"] - FITS["positive"])
            emotion = max(fits, key=lambda e: p["emotion"][i][EMOTIONS.index(e)])
            s = float(p["polarity"][i][0] - p["polarity"][i][1])
            if pol == "positive":
                s = max(s, 0.06)
            elif pol == "negative":
                s = min(s, -0.06)
            else:
                s = min(max(s, -0.04), 0.04)
            band = self.bands.get(f"{pol}/{emotion}", "mid")
            out.append(TextAnalysis(round(s, 4), emotion, satisfaction_in(band, s)))
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


def _fit(x: np.ndarray, y: np.ndarray, classes: int, l2: float, epochs: int = 3000) -> Any:
    targets = np.eye(classes, dtype=np.float64)[y]
    xd = x.astype(np.float64)
    w = np.zeros((x.shape[1], classes))
    b = np.zeros(classes)
    for _ in range(epochs):
        g = (_softmax(xd @ w + b) - targets) / len(x)
        w -= 0.5 * (xd.T @ g + l2 * w)
        b -= 0.5 * g.sum(axis=0)
    return w, b


def train(x: np.ndarray, labels: dict[str, list[str]]) -> dict[str, Any]:
    folds = np.random.default_rng(0).permutation(len(x)) % 5
    outputs = {}
    for name, classes in OUTPUTS.items():
        y = np.asarray([classes.index(v) for v in labels[name]])
        cv = {}
        for l2 in (0.0, 1e-4, 1e-3, 1e-2):
            right = 0
            for f in range(5):
                w, b = _fit(x[folds != f], y[folds != f], len(classes), l2)
                right += int(((x[folds == f] @ w + b).argmax(axis=1) == y[folds == f]).sum())
            cv[l2] = right / len(x)
        l2 = max(cv, key=lambda k: cv[k])
        w, b = _fit(x, y, len(classes), l2)
        outputs[name] = {
            "classes": list(classes),
            "l2": l2,
            "cv_accuracy": round(cv[l2], 4),
            "W": np.round(w, 6).tolist(),
            "b": np.round(b, 6).tolist(),
        }
    return outputs


def band_map(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The satisfaction band a supervisor gives each (polarity, emotion): in the labelled set
    it follows from them in 94 % of the train split (a worried customer is "mid" until
    something failed; a sad one as often low as mid: low). Majority, ties to the lower band."""
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        cell = counts.setdefault(f"{r['polarity']}/{r['emotion']}", dict.fromkeys(BANDS, 0))
        cell[r["satisfaction"]] += 1
    return {key: max(BANDS, key=lambda b: (c[b], -BANDS.index(b))) for key, c in counts.items()}


def main() -> None:
    from workers.sentiment import Sentiment

    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "train"]  # never the held-out split
    texts = [r["text"] for r in rows]
    x = features(Encoder().matrix(texts), Sentiment().analyze_many(texts))
    outputs = train(x, {name: [r[name] for r in rows] for name in OUTPUTS})
    WEIGHTS.parent.mkdir(exist_ok=True)
    doc = {
        "trained_on": f"{FIXTURE.name} train split, {len(rows)} messages",
        "outputs": outputs,
        "bands": band_map(rows),
    }
    WEIGHTS.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    for name, m in outputs.items():
        print(f"{name}: l2={m['l2']} cross-validated accuracy {100 * m['cv_accuracy']:.1f} %")


if __name__ == "__main__":
    main()
