"""The workers' own Prometheus metrics (fan-out's are in workers/fanout.py). Under `sense run`
the server's /metrics serves them; a separate `sense worker` on SENSE_WORKER_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Counter

ANALYZED = Counter(
    "sense_enrich_analyzed_total",
    "Messages the workers finished analysing, by state (done, skipped: no text, failed)",
    ["state"],
)
for _state in ("done", "skipped", "failed"):
    ANALYZED.labels(_state)
