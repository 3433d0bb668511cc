"""What an analysis provider can fail with, and what each failure means for the messages."""

from __future__ import annotations


class AnalyzerError(Exception):
    """The provider could not analyse this batch."""


class Unavailable(AnalyzerError):
    """The provider cannot be used right now (unreachable, overloaded, timing out, circuit
    open). Not the messages' fault: when retries run out their rows stay pending, and the
    reconciler tries again later."""


class BadAnswer(AnalyzerError):
    """The provider answered, but with something unusable (not JSON, missing items, values out
    of range, wrong embedding size). Retried; when retries run out the rows are failed."""
