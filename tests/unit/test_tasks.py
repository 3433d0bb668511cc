"""Stopping a background task that swallows a cancellation (as a library's cleanup can)."""

from __future__ import annotations

import asyncio

import pytest

from service import tasks


async def test_a_swallowed_cancellation_is_repeated_until_the_task_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "AGAIN_SECONDS", 0.05)
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed == 0:  # the first one is lost in "cleanup"
                    swallowed += 1
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue
                raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.stop(task), 5)
    assert task.cancelled() and swallowed == 1
    await tasks.stop(None)
