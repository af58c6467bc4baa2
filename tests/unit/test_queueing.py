"""The work queue's promises: one key never runs twice at once, keys run in parallel up to the bound, re-adds are
deduped or deferred, timers keep the earliest, failures back off per key and never kill a worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from rollout.queueing import Handler, ObjectKey, QueueShutDown, WorkQueue, run_workers
from rollout.settings import QueueSettings
from tests.unit.polling import eventually

A = ObjectKey("ns", "a")
B = ObjectKey("ns", "b")


async def let_others_run(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def workers_running(queue: WorkQueue, handler: Handler, *, workers: int) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run_workers(queue, handler, workers=workers))
    try:
        yield task
    finally:
        queue.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Tracker:
    """A handler that counts calls and concurrency per key, and blocks while `release` is clear."""

    def __init__(self) -> None:
        self.calls: Counter[ObjectKey] = Counter()
        self.active: Counter[ObjectKey] = Counter()
        self.max_active: Counter[ObjectKey] = Counter()
        self.total_active = 0
        self.max_total_active = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, key: ObjectKey) -> float | None:
        self.calls[key] += 1
        self.active[key] += 1
        self.total_active += 1
        self.max_active[key] = max(self.max_active[key], self.active[key])
        self.max_total_active = max(self.max_total_active, self.total_active)
        self.started.set()
        try:
            await self.release.wait()
        finally:
            self.active[key] -= 1
            self.total_active -= 1
        return None


def test_object_key_prints_as_namespace_slash_name() -> None:
    assert str(ObjectKey("prod", "web")) == "prod/web"
    assert str(ObjectKey("", "cluster-wide")) == "cluster-wide"
    assert ObjectKey.of({"metadata": {"namespace": "prod", "name": "web"}}) == ObjectKey("prod", "web")


async def test_adding_a_waiting_key_twice_queues_it_once() -> None:
    queue = WorkQueue()
    queue.add(A)
    queue.add(A)
    queue.add(B)
    assert len(queue) == 2
    assert await queue.get() == A
    assert await queue.get() == B
    assert len(queue) == 0


async def test_a_key_added_while_processing_is_requeued_once_when_done() -> None:
    queue = WorkQueue()
    queue.add(A)
    key = await queue.get()
    queue.add(A)
    queue.add(A)
    assert len(queue) == 0, "a key being processed must not be handed to another worker"
    queue.done(key)
    assert len(queue) == 1
    assert await queue.get() == A
    queue.done(A)
    assert len(queue) == 0


async def test_a_key_is_never_handled_by_two_workers_at_once() -> None:
    queue, handler = WorkQueue(), Tracker()
    async with workers_running(queue, handler, workers=4):
        queue.add(A)
        await handler.started.wait()
        for _ in range(3):
            queue.add(A)
        queue.add(B)
        # B reaching its handler proves idle workers took from the queue, and none of them took A.
        await eventually(lambda: handler.calls[B] == 1)
        await let_others_run()
        assert handler.calls[A] == 1
        assert handler.active[A] == 1
        handler.release.set()
        await eventually(lambda: handler.calls[A] == 2 and handler.total_active == 0)
        await let_others_run()
    assert handler.calls[A] == 2, "the adds made while A was processed collapse into one more run"
    assert handler.max_active[A] == 1


async def test_different_keys_run_in_parallel_up_to_the_worker_bound() -> None:
    queue, handler = WorkQueue(), Tracker()
    keys = [ObjectKey("ns", f"r{i}") for i in range(5)]
    async with workers_running(queue, handler, workers=3):
        for key in keys:
            queue.add(key)
        await eventually(lambda: handler.total_active == 3)
        await let_others_run()
        assert handler.total_active == 3
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert {"worker:0", "worker:1", "worker:2"} <= names
        handler.release.set()
        await eventually(lambda: all(handler.calls[key] == 1 for key in keys))
    assert handler.max_total_active == 3


async def test_add_after_keeps_only_the_earliest_timer() -> None:
    queue = WorkQueue()
    queue.add_after(A, 0.02)
    queue.add_after(A, 30)  # later: ignored
    queue.add_after(B, 30)
    queue.add_after(B, 0.04)  # earlier: replaces the 30 s timer
    await eventually(lambda: len(queue) == 2)
    assert {await queue.get(), await queue.get()} == {A, B}
    queue.shutdown()


async def test_shutdown_cancels_pending_timers_and_stops_get() -> None:
    queue = WorkQueue()
    queue.add_after(A, 0.3)  # long enough to be pending at shutdown on a loaded machine
    waiting = asyncio.create_task(queue.get())
    await let_others_run()
    queue.shutdown()
    with pytest.raises(QueueShutDown):
        await waiting
    await asyncio.sleep(0.4)  # past the timer: a timer left running would have fired by now
    queue.add(B)
    assert len(queue) == 0
    with pytest.raises(QueueShutDown):
        await queue.get()


async def test_a_cancelled_get_passes_its_wakeup_to_another_getter() -> None:
    queue = WorkQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await let_others_run()
    queue.add(A)  # wakes `first`
    first.cancel()
    assert await asyncio.wait_for(second, timeout=1) == A


async def test_backoff_grows_per_failure_and_forget_resets_it() -> None:
    queue = WorkQueue(QueueSettings(error_backoff=(1.0, 2.0, 5.0)))
    assert [queue.add_rate_limited(A) for _ in range(4)] == [1.0, 2.0, 5.0, 5.0]
    assert queue.failures(A) == 4
    assert queue.add_rate_limited(B) == 1.0, "backoff is counted per key"
    queue.forget(A)
    assert queue.failures(A) == 0
    assert queue.add_rate_limited(A) == 1.0
    queue.shutdown()


async def test_handler_exception_is_logged_and_retried_without_killing_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = WorkQueue(QueueSettings(error_backoff=(0.01,)))
    calls: Counter[ObjectKey] = Counter()

    async def flaky(key: ObjectKey) -> float | None:
        calls[key] += 1
        if key == A and calls[A] == 1:
            raise RuntimeError("boom")
        return None

    with caplog.at_level(logging.ERROR, logger="rollout.queueing"):
        async with workers_running(queue, flaky, workers=1):
            queue.add(A)
            await eventually(lambda: calls[A] == 2)
            queue.add(B)
            await eventually(lambda: calls[B] == 1)
            assert queue.failures(A) == 0, "a success forgets the backoff"
    assert any("ns/a" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_returned_delay_requeues_the_key() -> None:
    queue = WorkQueue()
    calls: Counter[ObjectKey] = Counter()

    async def again_once(key: ObjectKey) -> float | None:
        calls[key] += 1
        return 0.01 if calls[key] == 1 else None

    async with workers_running(queue, again_once, workers=2):
        queue.add(A)
        await eventually(lambda: calls[A] == 2)


async def test_cancelling_run_workers_cancels_the_workers_cleanly() -> None:
    queue, handler = WorkQueue(), Tracker()
    task = asyncio.create_task(run_workers(queue, handler, workers=2))
    queue.add(A)
    await handler.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handler.total_active == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("worker:")]
    queue.add(A)
    assert len(queue) == 1, "the cancelled worker marked its key done"


async def test_run_workers_returns_when_the_queue_shuts_down() -> None:
    queue = WorkQueue()

    async def nothing(key: ObjectKey) -> float | None:
        return None

    task = asyncio.create_task(run_workers(queue, nothing, workers=2))
    await let_others_run()
    queue.shutdown()
    await asyncio.wait_for(task, timeout=1)
