"""The command line's own parsing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.cli import parse_duration


def test_reanalyze_durations() -> None:
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("90") == timedelta(seconds=90)
    with pytest.raises(SystemExit, match="not a duration"):
        parse_duration("yesterday")
