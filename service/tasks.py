"""The background tasks every long-lived part of a process runs (publisher, quarantine guard,
registry listener, enqueuer, backfill runner, observer): how one is stopped."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

AGAIN_SECONDS = 1.0


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended. The cancellation is repeated until
    it takes: one delivered while the task was inside a library's cleanup can be swallowed
    there (asyncpg's pool release), and the task would go on looping; waiting for it once,
    shutdown hung."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=AGAIN_SECONDS)
    with contextlib.suppress(asyncio.CancelledError):
        await task
