"""Nothing lost: messages still ``pending`` after ``SENSE_RECONCILE_AGE_SECONDS`` are enqueued
again (their enqueue was dropped while Redis was down, or a worker died holding them).

Every worker process runs one in a thread; each round first takes a Postgres advisory lock
(``pg_try_advisory_lock``), so exactly one reconciler works at a time across all processes and
machines, and the others skip that round. A round enqueues the stale rows oldest first, in
messages of ``batch_size`` ids, up to ``max_per_round``; if the broker is still down it stops
and the next round tries again. Rows pending for longer than ``SENSE_RECONCILE_MAX_AGE_SECONDS``
are given up on (marked ``failed``), so nothing is retried forever.

Re-enqueueing a message that is in fact still queued (the workers are behind by more than the
age) is harmless and cheap: whichever copy runs second finds its rows no longer pending and
stops after one indexed SELECT; a round adds at most ``max_per_round`` ids to the queue.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from workers.store import RECONCILE_LOCK, Key, Store

log = logging.getLogger("sense.reconciler")

EXPIRED_REASON = "not analysed within SENSE_RECONCILE_MAX_AGE_SECONDS"


@dataclass(frozen=True, slots=True)
class Round:
    locked: bool
    enqueued: int = 0
    expired: int = 0
    error: str | None = None


class Reconciler:
    def __init__(
        self,
        store: Store,
        send: Callable[[list[Key]], None],
        *,
        age: float,
        max_age: float,
        interval: float,
        batch_size: int,
        max_per_round: int = 50_000,
        on_expired: Callable[[list[Key]], None] | None = None,
        lock_key: int = RECONCILE_LOCK,
    ) -> None:
        self.store = store
        self.send = send
        self.age = age
        self.max_age = max_age
        self.interval = interval
        self.batch_size = batch_size
        self.max_per_round = max_per_round
        self.on_expired = on_expired
        self.lock_key = lock_key

    def run_forever(self, stop: threading.Event) -> None:
        # A random first delay spreads the rounds of processes started together.
        delay = random.uniform(0.1, 1.0) * min(self.interval, 5.0)
        while not stop.wait(delay):
            try:
                done = self.run_once()
                if done.enqueued or done.expired:
                    log.info(
                        "reconciled pending analyses",
                        extra={"enqueued": done.enqueued, "expired": done.expired},
                    )
            except Exception as exc:
                log.warning("reconcile round failed: %s: %s", exc.__class__.__name__, exc)
            delay = self.interval * random.uniform(0.9, 1.1)

    def run_once(self) -> Round:
        with self.store.advisory_lock(self.lock_key) as got:
            if not got:
                return Round(locked=False)
            expired = self.store.expire(self.max_age, EXPIRED_REASON)
            if expired and self.on_expired is not None:
                self.on_expired(expired)
            enqueued = 0
            after = None
            while enqueued < self.max_per_round:
                page = self.store.stale(
                    self.age,
                    self.max_age,
                    min(self.batch_size, self.max_per_round - enqueued),
                    after,
                )
                if not page:
                    break
                try:
                    self.send([key for _, key in page])
                except Exception as exc:  # broker still down: next round
                    return Round(True, enqueued, len(expired), f"{exc.__class__.__name__}: {exc}")
                enqueued += len(page)
                after = page[-1]
            return Round(True, enqueued, len(expired))
