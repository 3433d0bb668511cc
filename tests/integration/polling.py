"""Waiting for something to happen, without asserting how long it took: poll until it holds,
fail only after a generous deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], seconds: float = 10.0
) -> T:
    """Poll ``probe`` until ``done`` holds for its value (returned); fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {seconds} s")
        await asyncio.sleep(0.05)


def eventually_sync(probe: Callable[[], T], done: Callable[[T], bool], seconds: float = 10.0) -> T:
    """``eventually`` for blocking probes (the e2e tests)."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {seconds} s")
        time.sleep(0.05)
