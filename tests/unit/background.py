"""Helpers for unit tests that run a long-lived coroutine (an informer, an elector, a controller) in the background
and record what it reports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from rollout.kube import Body
from rollout.watching import Informer


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run `work` as a task for the `async with` block, then cancel it and wait until it has stopped."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def running(informer: Informer) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    """An informer watching for the `async with` block."""
    return background(informer.run())


class Recorder:
    """An informer's `on_change`: keeps (event type, name, resourceVersion) in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def __call__(self, event_type: str, body: Body) -> None:
        self.events.append((event_type, body["metadata"]["name"], body["metadata"]["resourceVersion"]))
