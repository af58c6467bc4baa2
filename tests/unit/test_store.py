"""The informer cache: a Store never rolls back to an older resourceVersion and indexes ReplicaSets by their
controlling Rollout; an Informer (over a scripted fake client, no Kubernetes) lists, watches, re-watches, re-lists
on 410 Gone and survives errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rollout.kube import ApiError, Body, Gone, Resource, ResourceVersion
from rollout.queueing import ObjectKey
from rollout.settings import WatchSettings
from rollout.watching import Informer, Store, controller_index
from tests.unit.background import Recorder, running
from tests.unit.polling import eventually

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
FAST = WatchSettings(timeout_seconds=5, error_backoff=(0.01,))


def obj(name: str, rv: str, *, namespace: str = "ns", owner: str | None = None, kind: str = "Rollout",
        controller: bool = True, data: str = "") -> Body:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": rv}
    if owner:
        meta["ownerReferences"] = [{"kind": kind, "name": owner, "controller": controller, "uid": "u"}]
    return {"metadata": meta, "data": {"v": data}}


# -- Store -------------------------------------------------------------------------------------------------------


def test_store_ignores_older_and_equal_resource_versions() -> None:
    store = Store()
    assert store.put(obj("a", "10", data="new"))
    assert not store.put(obj("a", "9", data="old"))
    assert not store.put(obj("a", "10", data="same"))
    assert store.get(ObjectKey("ns", "a")) == obj("a", "10", data="new")
    assert store.put(obj("a", "11", data="newer"))
    assert store.get(ObjectKey("ns", "a")) == obj("a", "11", data="newer")


def test_store_compares_resource_versions_as_integers() -> None:
    store = Store()
    store.put(obj("a", "9"))
    assert store.put(obj("a", "10")), "'10' < '9' as strings, but it is the newer version"


def test_store_takes_any_different_version_when_versions_are_not_integers() -> None:
    store = Store()
    store.put(obj("a", "abc"))
    assert store.put(obj("a", "abd"))
    assert not store.put(obj("a", "abd"))


def test_store_delete_removes_the_object_and_returns_it() -> None:
    store = Store()
    store.put(obj("a", "5"))
    store.put(obj("b", "6"))
    assert store.delete(obj("a", "7")) == obj("a", "5")
    assert store.get(ObjectKey("ns", "a")) is None
    assert [key for key, _ in store.items()] == [ObjectKey("ns", "b")]
    assert store.delete(obj("missing", "1")) is None


def test_store_delete_keeps_a_newer_object_recreated_under_the_same_name() -> None:
    store = Store()
    store.put(obj("a", "20"))
    assert store.delete(obj("a", "15")) is None
    assert ObjectKey("ns", "a") in store


def test_store_delete_without_a_version_always_deletes() -> None:
    store = Store()
    store.put(obj("a", "20"))
    assert store.delete({"metadata": {"name": "a", "namespace": "ns"}}) is not None
    assert len(store) == 0


def test_index_finds_replicasets_by_their_controlling_rollout() -> None:
    store = Store(index=controller_index("Rollout"))
    store.put(obj("web-2", "2", owner="web"))
    store.put(obj("web-1", "1", owner="web"))
    store.put(obj("api-1", "3", owner="api"))
    store.put(obj("adopted", "4", owner="web", controller=False))
    store.put(obj("by-deploy", "5", owner="web", kind="Deployment"))
    store.put(obj("web-1", "1", owner="web", namespace="other"))
    names = [o["metadata"]["name"] for o in store.by_index(ObjectKey("ns", "web"))]
    assert names == ["web-1", "web-2"]
    assert store.by_index(ObjectKey("other", "web")) == [obj("web-1", "1", owner="web", namespace="other")]
    assert store.by_index(ObjectKey("ns", "nobody")) == []


def test_index_follows_owner_changes_and_deletes() -> None:
    store = Store(index=controller_index("Rollout"))
    store.put(obj("rs", "1", owner="web"))
    store.put(obj("rs", "2", owner="api"))
    assert store.by_index(ObjectKey("ns", "web")) == []
    assert store.by_index(ObjectKey("ns", "api")) == [obj("rs", "2", owner="api")]
    store.delete(obj("rs", "3"))
    assert store.by_index(ObjectKey("ns", "api")) == []


# -- Informer over a scripted client -----------------------------------------------------------------------------

Script = list[tuple[str, Body]] | Exception


class FakeClient:
    """Answers `list` and `watch` from scripts; a watch with no script left blocks until cancelled."""

    def __init__(self, lists: list[tuple[list[Body], str] | Exception], watches: list[Script]) -> None:
        self.lists = lists
        self.watches = watches
        self.list_calls: list[str | None] = []
        self.watch_calls: list[tuple[str | None, str]] = []

    async def list(self, resource: Resource, *, namespace: str | None = None,
                   label_selector: str | None = None) -> tuple[list[Body], ResourceVersion]:
        self.list_calls.append(namespace)
        answer = self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]
        if isinstance(answer, Exception):
            raise answer
        items, rv = answer
        return [dict(item) for item in items], ResourceVersion(rv)

    async def watch(self, resource: Resource, *, resource_version: ResourceVersion, namespace: str | None = None,
                    label_selector: str | None = None, timeout_seconds: int = 300) -> AsyncIterator[tuple[str, Body]]:
        self.watch_calls.append((namespace, resource_version))
        if not self.watches:
            await asyncio.Event().wait()
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        for event in script:
            yield event




def informer(client: FakeClient, recorder: Recorder, *, namespaces: tuple[str, ...] = ("ns",),
             store: Store | None = None) -> Informer:
    return Informer(client, CONFIGMAPS, namespaces=namespaces, label_selector=None, settings=FAST,
                    store=store if store is not None else Store(), on_change=recorder)


async def test_informer_lists_then_rewatches_from_the_last_version_seen() -> None:
    client = FakeClient(
        lists=[([obj("a", "5")], "10")],
        watches=[[("ADDED", obj("b", "11")), ("BOOKMARK", {"metadata": {"resourceVersion": "15"}})],
                 [("MODIFIED", obj("a", "16"))]],
    )
    recorder = Recorder()
    inf = informer(client, recorder)
    async with running(inf):
        await asyncio.wait_for(inf.synced.wait(), 1)
        await eventually(lambda: len(client.watch_calls) == 3)
    assert client.watch_calls == [("ns", "10"), ("ns", "15"), ("ns", "16")]
    assert client.list_calls == ["ns"], "a watch the server ended is resumed, not listed again"
    assert recorder.events == [("ADDED", "a", "5"), ("ADDED", "b", "11"), ("MODIFIED", "a", "16")]
    stored = inf.store.get(ObjectKey("ns", "a"))
    assert stored is not None
    assert stored["kind"] == "ConfigMap", "the informer fills in what watch events leave out"


async def test_informer_relists_after_gone_and_reports_what_disappeared() -> None:
    client = FakeClient(
        lists=[([obj("a", "5"), obj("b", "6")], "10"), ([obj("b", "12")], "13")],
        watches=[Gone(status=410, reason="Expired", message="too old")],
    )
    recorder = Recorder()
    async with running(informer(client, recorder)):
        await eventually(lambda: len(client.watch_calls) == 2)
    assert client.watch_calls[1] == ("ns", "13")
    assert recorder.events[2:] == [("MODIFIED", "b", "12"), ("DELETED", "a", "5")]


async def test_relist_keeps_objects_the_reconciler_stored_after_the_list() -> None:
    store = Store()
    client = FakeClient(lists=[([], "10")], watches=[])
    inf = informer(client, Recorder(), store=store)
    store.put(obj("fresh", "11"))
    store.put(obj("stale", "9"))
    store.put(obj("elsewhere", "9", namespace="other"))
    await inf.relist("ns")
    assert sorted(key.name for key, _ in store.items()) == ["elsewhere", "fresh"]


async def test_informer_survives_errors_and_backs_off() -> None:
    client = FakeClient(
        lists=[ApiError(status=503, reason="Unavailable", message="x"), ([obj("a", "5")], "10"), ([], "20")],
        watches=[ApiError(status=403, reason="Forbidden", message="no"), RuntimeError("bug"),
                 [("ADDED", obj("b", "21"))]],
    )
    recorder = Recorder()
    inf = informer(client, recorder)
    async with running(inf) as task:
        await eventually(lambda: ("ADDED", "b", "21") in recorder.events)
        assert not task.done()
    assert client.list_calls == ["ns", "ns", "ns"], "503 retried; an unexpected error lists again"
    assert client.watch_calls[:3] == [("ns", "10"), ("ns", "10"), ("ns", "20")]
    assert ("DELETED", "a", "5") in recorder.events


async def test_a_failing_on_change_does_not_stop_the_watch() -> None:
    client = FakeClient(lists=[([], "1")], watches=[[("ADDED", obj("a", "2")), ("ADDED", obj("b", "3"))]])
    seen: list[str] = []

    def fragile(event_type: str, body: Body) -> None:
        seen.append(body["metadata"]["name"])
        raise ValueError("handler bug")

    inf = Informer(client, CONFIGMAPS, namespaces=("ns",), label_selector=None, settings=FAST, store=Store(),
                   on_change=fragile)
    async with running(inf):
        await eventually(lambda: seen == ["a", "b"])
    assert len(inf.store) == 2


async def test_synced_waits_for_every_namespace_each_in_a_named_task() -> None:
    gate = asyncio.Event()

    class SlowSecond(FakeClient):
        async def list(self, resource: Resource, *, namespace: str | None = None,
                       label_selector: str | None = None) -> tuple[list[Body], ResourceVersion]:
            if namespace == "b":
                await gate.wait()
            return await super().list(resource, namespace=namespace, label_selector=label_selector)

    client = SlowSecond(lists=[([], "1")], watches=[])
    inf = informer(client, Recorder(), namespaces=("a", "b"))
    async with running(inf):
        await eventually(lambda: "a" in client.list_calls)
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert {"watch:configmaps:a", "watch:configmaps:b"} <= names
        assert not inf.synced.is_set()
        gate.set()
        await asyncio.wait_for(inf.synced.wait(), 1)


@pytest.mark.parametrize("namespaces", [(), ("a", "b")])
async def test_cluster_scoped_resources_are_watched_once(namespaces: tuple[str, ...]) -> None:
    client = FakeClient(lists=[([], "1")], watches=[])
    inf = Informer(client, Resource("", "v1", "namespaces", "Namespace", namespaced=False), namespaces=namespaces,
                   label_selector=None, settings=FAST, store=Store(), on_change=Recorder())
    async with running(inf):
        await asyncio.wait_for(inf.synced.wait(), 1)
    assert client.list_calls == [None]


async def test_our_own_write_is_reported_once_whether_recorded_or_watched_first() -> None:
    recorder = Recorder()
    client = FakeClient(lists=[([obj("a", "5")], "10")],
                        watches=[[("MODIFIED", obj("a", "11")), ("ADDED", obj("b", "12"))]])
    inf = informer(client, recorder)
    inf.record(obj("a", "11"))  # the answer to our PATCH, before its watch event
    inf.record(obj("b", "12"))  # the answer to our CREATE
    assert recorder.events == [("ADDED", "a", "11"), ("ADDED", "b", "12")]
    async with running(inf):
        await eventually(lambda: inf.synced.is_set())
        await eventually(lambda: ObjectKey("ns", "b") in inf.store)
    # The list (older) and the watch events (the same versions) find the store up to date: nothing more reported.
    assert recorder.events == [("ADDED", "a", "11"), ("ADDED", "b", "12")]
    inf.record(obj("b", "13"))
    assert recorder.events[-1] == ("MODIFIED", "b", "13")
