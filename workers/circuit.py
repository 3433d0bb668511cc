"""A circuit breaker for a remote API: after ``threshold`` consecutive failures, calls fail at
once for ``cooldown`` seconds; then one trial call is let through (half-open) and its outcome
closes or re-opens the circuit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitOpen(Exception):
    """The remote API failed repeatedly: not called for now."""


class CircuitBreaker:
    def __init__(
        self,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self.opened_at is None:
                return "closed"
            return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def before_call(self) -> None:
        """Raise CircuitOpen unless a call may go out now."""
        with self._lock:
            if self.opened_at is None:
                return
            waited = self.clock() - self.opened_at
            if waited < self.cooldown or self._trial:
                left = max(self.cooldown - waited, 0.0)
                raise CircuitOpen(
                    f"circuit open after {self.failures} consecutive failures "
                    f"(next try in {left:.0f} s)"
                )
            self._trial = True  # exactly one caller probes the API

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self.opened_at = None
            self._trial = False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self._trial or self.failures >= self.threshold:
                self.opened_at = self.clock()
            self._trial = False
