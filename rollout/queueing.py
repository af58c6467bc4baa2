"""A keyed work queue and the bounded worker pool that drains it.

The watchers (`rollout/watching.py`) turn every event into "this object needs a look" by adding its `ObjectKey` here;
the reconciler is the `handler` that `run_workers` calls with one key at a time. The queue carries keys, never
objects: the handler reads the current state from the informers' stores when it runs, so a burst of ten events for
one Rollout collapses into one reconcile of its latest state (level-triggered, STYLE point 2).

The guarantees are those of client-go's workqueue and kopf's per-object queues:

- a key waiting in the queue is not queued twice (`add` dedupes);
- a key being processed is never handed to a second worker: adding it meanwhile marks it dirty, and `done` puts it
  back once, so the change that arrived mid-reconcile is still seen;
- different keys run in parallel, up to the number of workers;
- delayed re-queues (`add_after`) keep only the earliest pending timer per key, and failures back off per key along
  `QueueSettings.error_backoff` (retries are data, STYLE point 8) until `forget` resets the count.

Shutting down drops whatever is still queued: a restarted controller lists everything again and reconciles it anyway.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rollout.settings import QueueSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class ObjectKey:
    """Which object needs work: namespace ("" for cluster-scoped objects) and name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ObjectKey:
        """The key of a Kubernetes object body."""
        meta = body.get("metadata") or {}
        return cls(namespace=str(meta.get("namespace") or ""), name=str(meta["name"]))


class RetryLater(Exception):
    """Raised by a handler for a key that cannot progress yet (the reason is recorded elsewhere, e.g. in the
    object's status): retried with the key's growing backoff, logged without a traceback."""


class QueueShutDown(Exception):
    """Raised by `WorkQueue.get` once the queue is shut down."""


class WorkQueue:
    """Keys waiting for a worker, with dedupe, dirty re-queue, delayed adds and per-key backoff.

    Not thread-safe: every method must be called from the event loop that runs the workers.
    """

    def __init__(self, settings: QueueSettings | None = None) -> None:
        self._backoff = (settings or QueueSettings()).error_backoff
        self._queue: collections.deque[ObjectKey] = collections.deque()
        self._dirty: set[ObjectKey] = set()  # keys that need processing: queued, or re-added while processing
        self._processing: set[ObjectKey] = set()
        self._timers: dict[ObjectKey, asyncio.TimerHandle] = {}
        self._failures: dict[ObjectKey, int] = {}
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._shutting_down = False

    def __len__(self) -> int:
        """Keys ready for a worker now (not those being processed or waiting on a timer)."""
        return len(self._queue)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def add(self, key: ObjectKey) -> None:
        """Queue `key` unless it is already waiting; if a worker has it, re-queue it once that worker is done."""
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._push(key)

    def add_after(self, key: ObjectKey, delay: float) -> None:
        """Add `key` after `delay` seconds; an earlier pending timer for the same key wins over a later one."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None:
            if existing.when() <= loop.time() + delay:
                return
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def add_rate_limited(self, key: ObjectKey) -> float:
        """Add `key` after its next backoff delay (growing with each failure until `forget`); returns the delay."""
        failures = self._failures.get(key, 0)
        delay = self._backoff[min(failures, len(self._backoff) - 1)]
        self._failures[key] = failures + 1
        self.add_after(key, delay)
        return delay

    def forget(self, key: ObjectKey) -> None:
        """Reset the backoff of `key`: its next failure waits the first delay again."""
        self._failures.pop(key, None)

    def failures(self, key: ObjectKey) -> int:
        """How many times in a row `key` has been re-queued by `add_rate_limited`."""
        return self._failures.get(key, 0)

    async def get(self) -> ObjectKey:
        """Wait for a key and mark it as being processed; the caller must call `done(key)` afterwards."""
        while not self._queue:
            if self._shutting_down:
                raise QueueShutDown()
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                elif self._queue:
                    self._wake_one()  # we were woken for a key but will not take it: pass the wake-up on
                raise
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: ObjectKey) -> None:
        """Mark `key` as processed; if it was added meanwhile, queue it again."""
        self._processing.discard(key)
        if key in self._dirty and not self._shutting_down:
            self._push(key)

    def shutdown(self) -> None:
        """Stop accepting keys, cancel pending timers and make every waiting and future `get` raise."""
        self._shutting_down = True
        self._queue.clear()
        self._dirty.clear()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)

    def _push(self, key: ObjectKey) -> None:
        self._queue.append(key)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def _fire(self, key: ObjectKey) -> None:
        self._timers.pop(key, None)
        self.add(key)


Handler = Callable[[ObjectKey], Awaitable[float | None]]


async def run_workers(queue: WorkQueue, handler: Handler, *, workers: int, name: str = "worker") -> None:
    """Run `workers` named tasks that take keys from `queue` and call `handler` until the queue shuts down.

    `handler` returns None when the key is done, or a delay in seconds after which to look at it again; either way
    its failure backoff is forgotten. An exception is logged with the key and the key is retried with backoff; it
    never ends a worker. Cancelling this coroutine cancels the workers and waits for them.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    async with asyncio.TaskGroup() as group:
        for index in range(workers):
            group.create_task(_work(queue, handler), name=f"{name}:{index}")


async def _work(queue: WorkQueue, handler: Handler) -> None:
    while True:
        try:
            key = await queue.get()
        except QueueShutDown:
            return
        try:
            await _handle(queue, handler, key)
        finally:
            queue.done(key)


async def _handle(queue: WorkQueue, handler: Handler, key: ObjectKey) -> None:
    try:
        requeue_after = await handler(key)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        # The handler let a CancelledError of its own escape (an inner task it awaited was cancelled); this worker
        # was not asked to stop, so it is an ordinary failure of this key.
        delay = queue.add_rate_limited(key)
        log.exception("handling %s was cancelled from inside; retrying in %.1fs", key, delay)
        return
    except RetryLater as exc:
        delay = queue.add_rate_limited(key)
        log.info("%s cannot progress (%s); retrying in %.1fs", key, exc, delay)
        return
    except Exception as exc:
        delay = queue.add_rate_limited(key)
        if getattr(exc, "temporary", False):
            log.warning("handling %s failed: %s; retrying in %.1fs", key, exc, delay)
        else:
            log.exception("handling %s failed; retrying in %.1fs", key, delay)
        return
    queue.forget(key)
    if requeue_after is not None:
        queue.add_after(key, requeue_after)
