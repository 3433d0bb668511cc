"""The workers' actors, both idempotent: index a batch of messages for search, then analyse it.

``index_messages([[tenant_id, instance_id, message_id], ...])`` (queue ``sense-index``) is
what the web process enqueues for every message whose content it stored: one statement
writes their search rows (the Portuguese tsvector, migration 0009) and the messages still
waiting for analysis are handed on to ``analyze_messages`` in one broker message. It has its
own queue and thread, so a message is searchable by text within seconds however far behind
the analysis is.

``analyze_messages([[tenant_id, instance_id, message_id], ...])`` (queue ``sense-enrich``;
names shared with service/enqueue.py, which enqueues it without importing this module):

1. load the rows still ``pending`` (one query; rows already analysed are simply not there, so
   a second run of the same message changes nothing);
2. rows without text (only whitespace) become ``skipped`` — not analyzable, not failed;
3. analyse and embed the texts in one provider call each;
4. write every result with one UPDATE (``unnest`` arrays, only rows still pending);
5. publish ``message.analyzed`` frames for what was written.

Failures: Dramatiq's Retries middleware retries with exponential backoff
(``SENSE_ENRICH_MAX_RETRIES``, ``…_MIN/MAX_BACKOFF_SECONDS``) and TimeLimit stops an attempt
after ``SENSE_ENRICH_TIME_LIMIT_SECONDS``. When retries run out the message is dead-lettered
(Redis ``dramatiq:sense-enrich.XQ``) and ``FailedRows`` marks its rows ``failed`` with the
reason — except when the provider was *unavailable* (unreachable, overloaded, circuit open):
that is no fault of the messages, so their rows stay ``pending`` and the reconciler enqueues
them again later (until ``SENSE_RECONCILE_MAX_AGE_SECONDS``, then they are failed too).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, SkipMessage

from service.contracts import (
    ACTOR,
    BACKFILL_ACTOR,
    BACKFILL_QUEUE,
    INDEX_ACTOR,
    INDEX_QUEUE,
    QUEUE,
    by_tenant,
)
from workers.metrics import ANALYZED
from workers.provider import BadAnswer, Provider, Unavailable
from workers.store import Key, Result, Row, Saved, parse_keys

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("sense.enrich")

Publish = Callable[[uuid.UUID, list[dict[str, Any]]], None]


class RowStore(Protocol):
    """What the actors need from Postgres (workers.store.Store)."""

    def index(self, keys: list[Key]) -> list[Key]: ...

    def load(self, keys: list[Key]) -> list[Row]: ...

    def save(self, results: list[Result], analyzer: str | None = None) -> list[Saved]: ...

    def fail(self, keys: list[Key], reason: str) -> list[Key]: ...


class Indexing:
    """The index actor's work, independent of Dramatiq: ``forward`` enqueues the analysis."""

    def __init__(self, store: RowStore, forward: Callable[[list[Key]], None]) -> None:
        self.store = store
        self.forward = forward

    def index(self, raw_keys: Iterable[Iterable[Any]]) -> list[Key]:
        pending = self.store.index(parse_keys(raw_keys))
        # One analysis job per tenant: a tenant's messages never share a job, a prompt or a
        # failure with another tenant's. A failure here retries the whole message: indexing
        # again changes nothing.
        for keys in by_tenant(pending).values():
            self.forward(keys)
        return pending


# What a failed analysis records (``analysis.error``, shown to the tenant): a code and a fixed
# sentence, never what the provider or the model said (it may echo text of the prompt).
FAILURES = {
    "bad_answer": "the analyzer's answer could not be used",
    "time_limit": "the analysis took too long",
    "internal_error": "the analysis failed",
}


def failure_reason(exception: BaseException) -> str:
    from dramatiq.middleware import TimeLimitExceeded

    if isinstance(exception, BadAnswer):
        code = "bad_answer"
    elif isinstance(exception, TimeLimitExceeded):
        code = "time_limit"
    else:
        code = "internal_error"
    return f"{code}: {FAILURES[code]}"


class Enrichment:
    """The analysis actor's work, independent of Dramatiq."""

    def __init__(self, store: RowStore, provider: Provider, publish: Publish | None = None):
        self.store = store
        self.provider = provider
        self.publish = publish

    def analyze(self, raw_keys: Iterable[Iterable[Any]]) -> list[Saved]:
        rows = self.store.load(parse_keys(raw_keys))
        if not rows:
            return []
        texts = [r for r in rows if r.text is not None and r.text.strip()]
        results = [Result(r.key, "skipped") for r in rows if r.text is None or not r.text.strip()]
        # one provider call per tenant (jobs hold one tenant already; this holds for any job):
        # a prompt never mixes two tenants' messages
        per_tenant: dict[uuid.UUID, list[Row]] = {}
        for r in texts:
            per_tenant.setdefault(r.key[0], []).append(r)
        for group in per_tenant.values():
            batch = [r.text or "" for r in group]
            analyses = self.provider.analyze(batch)
            vectors = self.provider.embed(batch)
            if len(analyses) != len(batch) or len(vectors) != len(batch):
                raise BadAnswer(
                    f"{self.provider.name}: {len(analyses)} analyses and {len(vectors)} "
                    f"embeddings for {len(batch)} texts"
                )
            results += [
                Result(r.key, "done", a.sentiment, a.emotion, a.satisfaction, v)
                for r, a, v in zip(group, analyses, vectors, strict=True)
            ]
        saved = self.store.save(results, self.provider.version)
        for s in saved:
            ANALYZED.labels(s.state).inc()
        self.announce(
            (
                s.key,
                {
                    "state": s.state,
                    "sentiment": s.sentiment,
                    "emotion": s.emotion,
                    "satisfaction": s.satisfaction,
                    "analyzer": self.provider.version,
                },
            )
            for s in saved
        )
        return saved

    def give_up(self, raw_keys: Iterable[Iterable[Any]], exception: BaseException) -> list[Key]:
        """Retries ran out: fail the rows with the reason, unless the provider was merely
        unavailable (then they stay pending for the reconciler)."""
        keys = parse_keys(raw_keys)
        detail = f"{exception.__class__.__name__}: {exception}"[:500]  # for the operator's log
        if isinstance(exception, Unavailable):
            log.warning(
                "analysis unavailable, %d messages left pending for the reconciler: %s",
                len(keys),
                detail,
            )
            return []
        reason = failure_reason(exception)
        failed = self.store.fail(keys, reason)
        ANALYZED.labels("failed").inc(len(failed))
        log.error("analysis failed for %d messages: %s", len(failed), detail)
        self.announce((k, {"state": "failed", "error": reason}) for k in failed)
        return failed

    def announce(self, items: Iterable[tuple[Key, dict[str, Any]]]) -> None:
        if self.publish is None:
            return
        per_tenant: dict[uuid.UUID, list[dict[str, Any]]] = {}
        for (tenant_id, instance_id, message_id), fields in items:
            per_tenant.setdefault(tenant_id, []).append(
                {"instance_id": instance_id, "message_id": message_id, **fields}
            )
        for tenant_id, frames in per_tenant.items():
            try:
                self.publish(tenant_id, frames)
            except Exception as exc:  # live clients catch up on reconnect; the data is written
                log.warning("analyzed frames not published: %s", exc.__class__.__name__)


class FailedRows(Middleware):
    """Marks a dead-lettered message's rows failed. Put it *before* Retries in the middleware
    list: ``after_*`` hooks run in reverse order, so Retries has decided by then."""

    def __init__(self, enrichment_of: Callable[[], Enrichment | None]) -> None:
        self.enrichment_of = enrichment_of

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not getattr(message, "failed", False):
            return
        self._give_up(message, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if getattr(message, "failed", False):
            self._give_up(message, SkipMessage("message skipped by the broker middleware"))

    def _give_up(self, message: MessageProxy, exception: BaseException) -> None:
        enrichment = self.enrichment_of()
        if message.actor_name != ACTOR or enrichment is None or not message.args:
            return
        try:
            enrichment.give_up(message.args[0], exception)
        except Exception:
            # Postgres away too: the rows stay pending, the reconciler has them
            log.exception("could not mark %s's rows failed", message.message_id)


def middleware(
    enrichment_of: Callable[[], Enrichment | None], time_limit_check_ms: int = 1000
) -> list[Middleware]:
    """The broker's middleware, in this order (``after_*`` hooks run last to first)."""
    from dramatiq.middleware import Retries, ShutdownNotifications, TimeLimit

    return [
        FailedRows(enrichment_of),
        TimeLimit(interval=time_limit_check_ms),
        ShutdownNotifications(),
        Retries(),
    ]


def _actor(
    broker: dramatiq.Broker, actor_name: str, queue_name: str, settings: Settings
) -> Callable[[Callable[[list[list[str]]], None]], dramatiq.Actor[Any, Any]]:
    """The decorator both actors are declared with: retries and time limit
    (``SENSE_ENRICH_*``)."""
    return dramatiq.actor(
        broker=broker,
        actor_name=actor_name,
        queue_name=queue_name,
        max_retries=settings.enrich_max_retries,
        min_backoff=int(settings.enrich_min_backoff_seconds * 1000),
        max_backoff=int(settings.enrich_max_backoff_seconds * 1000),
        time_limit=int(settings.enrich_time_limit_seconds * 1000),
    )


def declare(
    broker: dramatiq.Broker, enrichment: Enrichment, settings: Settings
) -> dramatiq.Actor[Any, Any]:
    """Register ``analyze_messages`` on ``broker`` (a RedisBroker, or a StubBroker in tests),
    bound to ``enrichment``."""

    def analyze_messages(keys: list[list[str]]) -> None:
        enrichment.analyze(keys)

    return _actor(broker, ACTOR, QUEUE, settings)(analyze_messages)


def declare_index(
    broker: dramatiq.Broker, indexing: Indexing, settings: Settings
) -> dramatiq.Actor[Any, Any]:
    """Register ``index_messages`` on ``broker``, bound to ``indexing``. A message that runs
    out of retries (Postgres away for minutes) leaves its rows to the reconciler."""

    def index_messages(keys: list[list[str]]) -> None:
        indexing.index(keys)

    return _actor(broker, INDEX_ACTOR, INDEX_QUEUE, settings)(index_messages)


def declare_recovered(
    broker: dramatiq.Broker,
    handle: Callable[[list[list[str]], int], None],
    settings: Settings,
) -> dramatiq.Actor[Any, Any]:
    """Register ``index_recovered`` (messages a backfill recovered) on ``broker``: ``handle``
    indexes and analyses them, or puts them back for later while live traffic waits."""

    def index_recovered(keys: list[list[str]], deferrals: int = 0) -> None:
        handle(keys, deferrals)

    return _actor(broker, BACKFILL_ACTOR, BACKFILL_QUEUE, settings)(index_recovered)
