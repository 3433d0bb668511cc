"""Nothing lost: messages still not analysed or not indexed ``SENSE_RECONCILE_AGE_SECONDS``
after their content arrived are enqueued again (their enqueue was dropped while Redis was down,
or a worker died holding them).

Every worker process runs one in a thread; each round first takes a Postgres advisory lock
(``pg_try_advisory_lock``), so exactly one reconciler works at a time across all processes and
machines, and the others skip that round.

A round walks the messages in the order their content arrived (index ``messages_content_at``)
from a watermark kept in Postgres (``sense_reconcile``, migration 0009): everything at or
before it is analysed (or given up on) and indexed. It sends what still needs work to the
index actor (which indexes, then hands the pending ones to analysis), in messages of
``batch_size`` ids, and moves the watermark up to the first message that still needs work.
So a round reads only what arrived since the oldest unfinished message, at most
``max_scan`` rows, and sends at most ``max_per_round`` ids; if the broker is down it stops and
the next round tries again. Messages pending for longer than
``SENSE_RECONCILE_MAX_AGE_SECONDS`` are given up on (marked ``failed``) and the walk never
starts before that age, so nothing is retried forever.

Re-enqueueing a message that is in fact still queued (the workers are behind by more than the
age) is harmless and cheap: whichever copy runs second finds nothing left to do.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from workers.store import RECONCILE_LOCK, Key, Position, Store

log = logging.getLogger("sense.reconciler")

EXPIRED_REASON = "not analysed within SENSE_RECONCILE_MAX_AGE_SECONDS"


@dataclass(frozen=True, slots=True)
class Round:
    locked: bool
    enqueued: int = 0
    expired: int = 0
    error: str | None = None
    scanned: int = 0


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
        max_scan: int = 500_000,
        page_size: int = 5_000,
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
        self.max_scan = max_scan
        self.page_size = page_size
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
                        "reconciled unfinished messages",
                        extra={"enqueued": done.enqueued, "expired": done.expired},
                    )
            except Exception as exc:
                log.warning("reconcile round failed: %s: %s", exc.__class__.__name__, exc)
            delay = self.interval * random.uniform(0.9, 1.1)

    def run_once(self) -> Round:
        with self.store.advisory_lock(self.lock_key) as got:
            if not got:
                return Round(locked=False)
            start = self.store.position()
            expired = self.store.expire(self.max_age, EXPIRED_REASON, start)
            if expired and self.on_expired is not None:
                self.on_expired(expired)
            # nothing older than max_age is waited for any more
            floor: Position = (datetime.now(UTC) - timedelta(seconds=self.max_age), 0)
            after = max(start, floor)
            mark = after  # the watermark: moves only past messages with nothing left to do
            blocked = False
            waiting: list[Key] = []
            scanned = 0
            while scanned < self.max_scan and len(waiting) < self.max_per_round:
                page = self.store.scan(after, self.age, self.page_size)
                scanned += len(page)
                for row in page:
                    if row.pending or row.unindexed:
                        blocked = True
                        waiting.append(row.key)
                    elif not blocked:
                        mark = row.position
                if len(page) < self.page_size:
                    break
                after = page[-1].position
            del waiting[self.max_per_round :]
            enqueued, error = self._send(waiting)
            if mark > start:
                self.store.advance(mark)
            return Round(True, enqueued, len(expired), error, scanned)

    def _send(self, keys: list[Key]) -> tuple[int, str | None]:
        sent = 0
        for i in range(0, len(keys), self.batch_size):
            chunk = keys[i : i + self.batch_size]
            try:
                self.send(chunk)
            except Exception as exc:  # broker still down: the next round tries again
                return sent, f"{exc.__class__.__name__}: {exc}"
            sent += len(chunk)
        return sent, None
