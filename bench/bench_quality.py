"""Analysis quality on the labelled Portuguese set (tests/fixtures/analysis_pt.jsonl).

Run: ``.venv/bin/python -m bench.bench_quality [--split heldout|train] [--provider local|openai]``
(``make bench-quality``). Scores each message of the split with the configured provider and
compares with the supervisor's labels (tests/fixtures/analysis_pt.md): polarity (sentiment >
0.05 positive, < -0.05 negative, else neutral), emotion, satisfaction band (< 40 low, > 60
high, else mid); overall and per trait. Only the held-out split counts: the train split is
what the classifier learnt from. With ``--provider openai`` it scores through the configured
OpenAI-compatible API (SENSE_AI_BASE_URL, SENSE_AI_API_KEY, SENSE_AI_CHAT_MODEL).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "analysis_pt.jsonl"


def examples(split: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["split"] == split]


def polarity(sentiment: float) -> str:
    return "positive" if sentiment > 0.05 else "negative" if sentiment < -0.05 else "neutral"


def band(satisfaction: int) -> str:
    return "low" if satisfaction < 40 else "high" if satisfaction > 60 else "mid"


def score(rows: list[dict[str, Any]], analyses: list[Any]) -> dict[str, Any]:
    hits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for row, a in zip(rows, analyses, strict=True):
        got = {
            "polarity": polarity(a.sentiment),
            "emotion": a.emotion,
            "satisfaction": band(a.satisfaction),
        }
        for measure, value in got.items():
            for group in ["all", *row["traits"]]:
                cell = hits[group][measure]
                cell[0] += value == row[measure]
                cell[1] += 1
    return {
        group: {m: round(100 * ok / n, 1) for m, (ok, n) in measures.items()}
        | {"n": next(iter(measures.values()))[1]}
        for group, measures in sorted(hits.items(), key=lambda kv: (kv[0] != "all", kv[0]))
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="heldout", choices=["heldout", "train"])
    parser.add_argument("--provider", default="local", choices=["local", "openai"])
    args = parser.parse_args()
    from service.settings import load_settings
    from workers.provider import build_provider

    settings = load_settings(ai_provider=args.provider)
    provider = build_provider(settings)
    rows = examples(args.split)
    started = time.perf_counter()
    analyses = provider.analyze([r["text"] for r in rows])
    seconds = time.perf_counter() - started
    table = score(rows, analyses)
    print(f"{provider.version} on {len(rows)} {args.split} messages ({seconds:.2f} s to score)")
    print(f"{'group':<18}{'n':>5}{'polarity':>10}{'emotion':>10}{'satisfaction':>14}")
    for group, m in table.items():
        print(
            f"{group:<18}{m['n']:>5}{m['polarity']:>9}%{m['emotion']:>9}%{m['satisfaction']:>13}%"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
