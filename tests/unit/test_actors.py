"""The enrichment actor on Dramatiq's StubBroker (same interface as the Redis broker), with the
real offline analyzers. Postgres is the ``RowStore`` seam here (rows in a dict, the same
pending-only semantics as service/sql/enrichment.sql); tests/integration/test_enrichment.py
runs the same paths on real Postgres and Redis."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from service.contracts import ACTOR, QUEUE, message_args
from service.settings import Settings, load_settings
from workers.actors import Enrichment, declare, middleware
from workers.provider import BadAnswer, LocalProvider, Unavailable
from workers.sentiment import TextAnalysis
from workers.store import Key, Result, Row, Saved

T1, T2 = uuid.UUID(int=1), uuid.UUID(int=2)
I1, I2 = uuid.UUID(int=11), uuid.UUID(int=22)


class MemoryStore:
    """Rows by key: {"state", "text", ...}; only 'pending' rows are loaded or written."""

    def __init__(self) -> None:
        self.rows: dict[Key, dict[str, Any]] = {}
        self.saves = 0
        self.lock = threading.Lock()

    def add(self, key: Key, text: str | None, state: str = "pending") -> None:
        self.rows[key] = {"state": state, "text": text}

    def load(self, keys: list[Key]) -> list[Row]:
        with self.lock:
            return [
                Row(k, self.rows[k]["text"])
                for k in keys
                if k in self.rows and self.rows[k]["state"] == "pending"
            ]

    def save(self, results: list[Result], analyzer: str | None = None) -> list[Saved]:
        with self.lock:
            self.saves += 1
            out = []
            for r in results:
                row = self.rows.get(r.key)
                if row is None or row["state"] != "pending":
                    continue
                row.update(
                    state=r.state,
                    sentiment=r.sentiment,
                    emotion=r.emotion,
                    satisfaction=r.satisfaction,
                    embedding=r.embedding,
                    analyzer=analyzer,
                )
                out.append(Saved(r.key, r.state, r.sentiment, r.emotion, r.satisfaction))
            return out

    def fail(self, keys: list[Key], reason: str) -> list[Key]:
        with self.lock:
            failed = [k for k in keys if self.rows.get(k, {}).get("state") == "pending"]
            for k in failed:
                self.rows[k].update(state="failed", error=reason)
            return failed


class Flaky:
    """Wraps a provider: the first ``failures`` analyze calls raise ``error``."""

    name = "flaky"
    version = "flaky/1"

    def __init__(self, inner: Any, failures: int, error: Exception, delay: float = 0.0) -> None:
        self.inner = inner
        self.failures = failures
        self.error = error
        self.delay = delay
        self.calls = 0

    def analyze(self, texts: list[str]) -> list[TextAnalysis]:
        self.calls += 1
        deadline = time.monotonic() + self.delay
        while time.monotonic() < deadline:  # interruptible by the time limit, unlike sleep()
            time.sleep(0.01)
        if self.calls <= self.failures:
            raise self.error
        result: list[TextAnalysis] = self.inner.analyze(texts)
        return result

    def embed(self, texts: list[str]) -> list[list[float]]:
        result: list[list[float]] = self.inner.embed(texts)
        return result


@pytest.fixture(scope="module")
def local() -> LocalProvider:
    return LocalProvider()


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "enrich_max_retries": 2,
        "enrich_min_backoff_seconds": 0.01,
        "enrich_max_backoff_seconds": 0.05,
        **overrides,
    }
    return load_settings({}, **values)


class Harness:
    def __init__(self, provider: Any, settings: Settings) -> None:
        self.store = MemoryStore()
        self.published: list[tuple[uuid.UUID, list[dict[str, Any]]]] = []
        self.enrichment = Enrichment(
            self.store, provider, lambda t, items: self.published.append((t, items))
        )
        self.broker = StubBroker(middleware=middleware(lambda: self.enrichment, 50))
        self.broker.emit_after("process_boot")
        self.actor = declare(self.broker, self.enrichment, settings)
        self.worker = dramatiq.Worker(self.broker, worker_timeout=20, worker_threads=2)
        self.worker.start()

    def run(self, keys: list[Key]) -> None:
        self.actor.send(message_args(keys))
        self.broker.join(QUEUE, fail_fast=False, timeout=30_000)
        self.worker.join()

    def close(self) -> None:
        self.worker.stop()
        self.broker.close()


@pytest.fixture
def harness(local: LocalProvider) -> Iterator[Harness]:
    h = Harness(local, _settings())
    yield h
    h.close()


def test_names_match_what_the_web_process_enqueues(harness: Harness) -> None:
    assert harness.actor.actor_name == ACTOR and harness.actor.queue_name == QUEUE


def test_one_message_analyses_a_batch_across_tenants(harness: Harness) -> None:
    keys: list[Key] = [
        (T1, I1, "A"),
        (T1, I1, "B"),
        (T2, I2, "C"),
        (T2, I2, "D"),
        (T1, I1, "GONE"),
    ]
    harness.store.add(keys[0], "Adorei o atendimento, muito obrigado!")
    harness.store.add(keys[1], "Péssimo, o produto chegou quebrado")
    harness.store.add(keys[2], "   ")  # only whitespace: not analyzable
    harness.store.add(keys[3], "Qual o horário de funcionamento?")
    harness.run(keys)  # GONE has no row: ignored
    rows = harness.store.rows
    assert rows[keys[0]]["state"] == "done" and rows[keys[0]]["sentiment"] > 0.3
    assert rows[keys[0]]["emotion"] == "gratidão" and rows[keys[0]]["satisfaction"] > 70
    assert rows[keys[1]]["sentiment"] < -0.3 and rows[keys[1]]["satisfaction"] < 35
    assert rows[keys[2]]["state"] == "skipped" and rows[keys[2]]["embedding"] is None
    assert rows[keys[3]]["emotion"] == "neutro" and len(rows[keys[3]]["embedding"]) == 512
    assert harness.store.saves == 1  # one write for the whole batch
    frames = {tenant: {i["message_id"]: i for i in items} for tenant, items in harness.published}
    assert set(frames) == {T1, T2}
    assert frames[T1]["A"]["state"] == "done" and frames[T1]["A"]["instance_id"] == I1
    assert frames[T2]["C"]["state"] == "skipped"
    assert harness.broker.dead_letters == []


def test_running_twice_gives_the_same_result(harness: Harness) -> None:
    key: Key = (T1, I1, "TWICE")
    harness.store.add(key, "Muito bom, obrigado")
    harness.run([key])
    first = dict(harness.store.rows[key])
    published = len(harness.published)
    harness.run([key])
    harness.run([key, key])
    assert harness.store.rows[key] == first
    assert len(harness.published) == published  # nothing new to announce
    # and the analysis itself is deterministic
    fresh = MemoryStore()
    fresh.add(key, "Muito bom, obrigado")
    Enrichment(fresh, harness.enrichment.provider).analyze(message_args([key]))
    assert fresh.rows[key] == first


def test_a_transient_failure_is_retried_with_backoff(local: LocalProvider) -> None:
    flaky = Flaky(local, failures=2, error=Unavailable("HTTP 503"))
    h = Harness(flaky, _settings())
    try:
        key: Key = (T1, I1, "RETRY")
        h.store.add(key, "Gostei muito")
        h.run([key])
        assert flaky.calls == 3
        assert h.store.rows[key]["state"] == "done"
        assert h.broker.dead_letters == []
    finally:
        h.close()


def test_a_message_that_keeps_failing_is_failed_and_dead_lettered(local: LocalProvider) -> None:
    flaky = Flaky(local, failures=100, error=BadAnswer("chat completion: not JSON"))
    h = Harness(flaky, _settings(enrich_max_retries=2))
    try:
        keys: list[Key] = [(T1, I1, "BAD1"), (T1, I1, "BAD2")]
        for k in keys:
            h.store.add(k, "texto qualquer")
        h.run(keys)
        assert flaky.calls == 3  # first try + 2 retries, never more
        for k in keys:
            assert h.store.rows[k]["state"] == "failed"
            # a code and a fixed sentence: never the provider's own words
            assert h.store.rows[k]["error"] == "bad_answer: the analyzer's answer could not be used"
        assert len(h.broker.dead_letters) == 1
        assert h.broker.dead_letters[0].args == (message_args(keys),)
        assert {i["state"] for _, items in h.published for i in items} == {"failed"}
    finally:
        h.close()


def test_an_unavailable_provider_leaves_rows_pending(local: LocalProvider) -> None:
    flaky = Flaky(local, failures=100, error=Unavailable("circuit open"))
    h = Harness(flaky, _settings(enrich_max_retries=1))
    try:
        key: Key = (T1, I1, "DOWN")
        h.store.add(key, "Olá")
        h.run([key])
        assert flaky.calls == 2
        assert h.store.rows[key]["state"] == "pending"  # the reconciler will enqueue it again
        assert len(h.broker.dead_letters) == 1
    finally:
        h.close()


def test_the_time_limit_stops_a_stuck_attempt(local: LocalProvider) -> None:
    slow = Flaky(local, failures=0, error=RuntimeError(), delay=5.0)
    h = Harness(slow, _settings(enrich_max_retries=0, enrich_time_limit_seconds=0.3))
    try:
        key: Key = (T1, I1, "SLOW")
        h.store.add(key, "Olá")
        h.run([key])  # stopped well before the 5 s the provider would take
        assert slow.calls == 1
        assert h.store.rows[key]["state"] == "failed"
        assert h.store.rows[key]["error"] == "time_limit: the analysis took too long"
    finally:
        h.close()


def test_recovered_messages_wait_while_live_work_is_queued() -> None:
    """The backfill queue's handler (workers/main.py): put back, with a delay, while the live
    queues hold work; indexed (then analysed) once they are empty, or after enough waits."""
    from types import SimpleNamespace

    from workers.main import RECOVERED_DEFER_MS, RECOVERED_MAX_DEFERRALS, WorkerProcess

    sent: list[tuple[Any, Any, int]] = []
    indexed: list[list[list[str]]] = []
    backlog = [3]
    process = SimpleNamespace(
        live_backlog=lambda: backlog[0],
        recovered_actor=SimpleNamespace(
            send_with_options=lambda args, kwargs, delay: sent.append((args, kwargs, delay))
        ),
        recovered=SimpleNamespace(index=indexed.append),
    )
    keys = message_args([(T1, I1, "R1")])
    WorkerProcess._recovered(process, keys, 0)  # type: ignore[arg-type]
    assert sent == [((keys,), {"deferrals": 1}, RECOVERED_DEFER_MS)] and indexed == []
    WorkerProcess._recovered(process, keys, RECOVERED_MAX_DEFERRALS)  # type: ignore[arg-type]
    assert indexed == [keys]  # waited long enough: taken despite the live backlog
    backlog[0] = 0
    WorkerProcess._recovered(process, keys, 1)  # type: ignore[arg-type]
    assert indexed == [keys, keys] and len(sent) == 1
