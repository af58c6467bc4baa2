"""The Informer against the real API server: it lists what exists, follows every change, resumes watches the server
ends without losing or repeating events, and a re-list (the 410 Gone path) reconciles a stale store.

ConfigMaps stand in for Rollouts: the informer does not care about the kind, and they need no CRD. Every test works
in a fresh namespace and selects its objects by label, so objects other controllers create there (kube-root-ca.crt)
stay out of the way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from rollout.kube import Body, KubeClient, Resource, ResourceVersion
from rollout.queueing import ObjectKey
from rollout.settings import WatchSettings
from rollout.watching import Informer, Store

pytestmark = pytest.mark.integration

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
LABELS = {"sluice.dev/test": "watching"}
SELECTOR = "sluice.dev/test=watching"


class CountingClient:
    """Passes list and watch through to the real client, counting how often each is started."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client
        self.lists = 0
        self.watches = 0

    async def list(self, resource: Resource, *, namespace: str | None = None,
                   label_selector: str | None = None) -> tuple[list[Body], ResourceVersion]:
        self.lists += 1
        return await self._client.list(resource, namespace=namespace, label_selector=label_selector)

    def watch(self, resource: Resource, *, resource_version: ResourceVersion, namespace: str | None = None,
              label_selector: str | None = None, timeout_seconds: int = 300) -> AsyncIterator[tuple[str, Body]]:
        self.watches += 1
        return self._client.watch(resource, resource_version=resource_version, namespace=namespace,
                                  label_selector=label_selector, timeout_seconds=timeout_seconds)

    def rewatched_after(self, watches: int) -> Callable[[], bool]:
        return lambda: self.watches > watches


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, event_type: str, body: Body) -> None:
        self.events.append((event_type, body["metadata"]["name"]))


async def eventually(condition: Callable[[], bool], *, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(informer: Informer) -> AsyncIterator[None]:
    task = asyncio.create_task(informer.run(), name="test-informer")
    try:
        await asyncio.wait_for(informer.synced.wait(), 20)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def configmap(name: str, value: str, *, labelled: bool = True) -> Body:
    meta: Body = {"name": name, "labels": dict(LABELS)} if labelled else {"name": name}
    return {"metadata": meta, "data": {"value": value}}


def make_informer(client: KubeClient | CountingClient, namespace: str, recorder: Recorder, *,
                  timeout_seconds: int = 300, store: Store | None = None) -> Informer:
    return Informer(client, CONFIGMAPS, namespaces=(namespace,), label_selector=SELECTOR,
                    settings=WatchSettings(timeout_seconds=timeout_seconds, error_backoff=(0.2,)),
                    store=store if store is not None else Store(), on_change=recorder)


async def test_informer_sees_existing_objects_after_sync_and_then_every_change(kube: KubeClient,
                                                                             namespace: str) -> None:
    await kube.create(CONFIGMAPS, configmap("before", "1"), namespace=namespace)
    recorder = Recorder()
    informer = make_informer(kube, namespace, recorder)
    async with running(informer):
        assert informer.store.get(ObjectKey(namespace, "before")) is not None
        await kube.create(CONFIGMAPS, configmap("unlabelled", "x", labelled=False), namespace=namespace)
        await kube.create(CONFIGMAPS, configmap("added", "1"), namespace=namespace)
        await kube.patch(CONFIGMAPS, name="before", namespace=namespace, patch={"data": {"value": "2"}})
        await kube.delete(CONFIGMAPS, name="added", namespace=namespace)
        await eventually(lambda: ("DELETED", "added") in recorder.events)
    assert recorder.events == [("ADDED", "before"), ("ADDED", "added"), ("MODIFIED", "before"), ("DELETED", "added")]
    before = informer.store.get(ObjectKey(namespace, "before"))
    assert before is not None
    assert before["data"] == {"value": "2"}
    assert [key.name for key, _ in informer.store.items()] == ["before"], "the label selector keeps others out"


async def test_rewatching_after_the_server_ends_the_stream_loses_no_events(kube: KubeClient, namespace: str) -> None:
    counting, recorder = CountingClient(kube), Recorder()
    informer = make_informer(counting, namespace, recorder, timeout_seconds=1)
    names = [f"cm-{i}" for i in range(4)]
    async with running(informer):
        for name in names:
            # Write right after the server ended the previous watch, when the next one may not be open yet.
            await eventually(counting.rewatched_after(counting.watches), within=10)
            await kube.create(CONFIGMAPS, configmap(name, "1"), namespace=namespace)
        await eventually(lambda: all(ObjectKey(namespace, n) in informer.store for n in names))
        assert counting.watches >= len(names)
    assert counting.lists == 1, "an ended watch is resumed from its last version, not listed again"
    assert recorder.events == [("ADDED", name) for name in names], "every event seen exactly once"


async def test_relist_reconciles_a_stale_store_and_reports_the_differences(kube: KubeClient, namespace: str) -> None:
    for name in ("kept", "changed", "removed"):
        await kube.create(CONFIGMAPS, configmap(name, "1"), namespace=namespace)
    recorder = Recorder()
    informer = make_informer(kube, namespace, recorder)
    async with running(informer):
        pass
    # Changes the stopped informer does not see, as if its watch had expired (410 Gone) meanwhile.
    await kube.delete(CONFIGMAPS, name="removed", namespace=namespace)
    await kube.patch(CONFIGMAPS, name="changed", namespace=namespace, patch={"data": {"value": "2"}})
    await kube.create(CONFIGMAPS, configmap("new", "1"), namespace=namespace)
    recorder.events.clear()
    await informer.relist(namespace)
    assert sorted(recorder.events) == [("ADDED", "new"), ("DELETED", "removed"), ("MODIFIED", "changed")]
    assert sorted(key.name for key, _ in informer.store.items()) == ["changed", "kept", "new"]
