"""Watching the traffic routers' objects: which objects a Rollout uses (rollout/routers/refs.py), the optional
informer that copes with clusters lacking a router's CRD (404) or the right to watch it (403), and the controller
waking the Rollouts that use an object someone changed. Scripted fake clients, no Kubernetes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from rollout.controller import Controller
from rollout.kube import (
    DESTINATIONRULES,
    HTTPROUTES,
    TRAFFICSPLITS,
    VIRTUALSERVICES,
    ApiError,
    Body,
    KubeClient,
    NotFound,
    Resource,
    ResourceVersion,
)
from rollout.queueing import ObjectKey
from rollout.routers.refs import WATCHED, RouterRef, object_key, rollout_index, router_refs
from rollout.settings import Settings, WatchSettings
from rollout.watching import Informer, Store, metadata_only
from tests.unit.background import Recorder, background, running
from tests.unit.polling import eventually

FAST = WatchSettings(timeout_seconds=5, error_backoff=(0.01,), unavailable_retry_seconds=0.01)
HANG = object()  # a list answer that never comes


def rollout(name: str = "web", *, namespace: str = "ns", **routing: Any) -> Body:
    return {"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
            "spec": {"strategy": {"canary": {"trafficRouting": routing}}}}


def router_object(name: str, rv: str, *, namespace: str = "ns", big: bool = False) -> Body:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": rv, "uid": f"uid-{name}"}
    if big:
        meta["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "x" * 10_000}
        meta["managedFields"] = [{"manager": "kubectl"}]
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta,
            "spec": {"http": [{"route": [{"weight": 100}]}]}}


# -- which router objects a Rollout uses ---------------------------------------------------------------------------


def test_istio_rollout_uses_its_virtual_service_and_destination_rule() -> None:
    body = rollout(istio={"virtualService": {"name": "web-vs", "routes": ["primary"]},
                          "destinationRule": {"name": "web-dr", "stableSubsetName": "s", "canarySubsetName": "c"}})
    assert router_refs(body) == (RouterRef("DestinationRule", "ns", "web-dr"),
                                 RouterRef("VirtualService", "ns", "web-vs"))


def test_smi_rollout_uses_its_traffic_split_in_its_namespace() -> None:
    body = rollout(smi={"trafficSplitName": "web-split", "rootService": "web"})
    assert router_refs(body) == (RouterRef("TrafficSplit", "ns", "web-split"),)


@pytest.mark.parametrize(("config", "namespace"), [({"httpRoute": "web"}, "ns"),
                                                   ({"httpRoute": "web", "namespace": "gateways"}, "gateways")])
def test_gateway_api_rollout_uses_its_http_route_where_it_says(config: Body, namespace: str) -> None:
    assert router_refs(rollout(gatewayAPI=config)) == (RouterRef("HTTPRoute", namespace, "web"),)


@pytest.mark.parametrize("body", [
    {"metadata": {"name": "bg", "namespace": "ns"}, "spec": {"strategy": {"blueGreen": {"activeService": "a"}}}},
    {"metadata": {"name": "empty", "namespace": "ns"}},
    {"metadata": {"name": "odd", "namespace": "ns"}, "spec": {"strategy": "canary"}},
    rollout(istio={"virtualService": "web"}),
    rollout(istio={"virtualService": {"name": ""}}),
    rollout(istio={"virtualService": {"name": 7}}),
    rollout(smi=None),
    rollout(gatewayAPI=["web"]),
    rollout(nginx={"stableIngress": "web"}),
])
def test_rollouts_without_usable_router_references_use_nothing_and_never_raise(body: Body) -> None:
    assert router_refs(body) == ()


def test_the_rollout_index_finds_rollouts_by_router_object_and_follows_edits() -> None:
    store = Store(index=rollout_index)
    store.put(rollout("a", istio={"virtualService": {"name": "shared"}}))
    store.put(rollout("b", istio={"virtualService": {"name": "shared"}}))
    store.put(rollout("c", istio={"virtualService": {"name": "shared"}}, namespace="other"))
    store.put(rollout("d", smi={"trafficSplitName": "shared"}))
    shared_vs = object_key("VirtualService", router_object("shared", "9"))
    assert [r["metadata"]["name"] for r in store.by_index(shared_vs)] == ["a", "b"]
    assert [r["metadata"]["name"] for r in store.by_index(RouterRef("TrafficSplit", "ns", "shared").key)] == ["d"]

    moved = rollout("b", istio={"virtualService": {"name": "own"}})
    moved["metadata"]["resourceVersion"] = "2"
    store.put(moved)
    assert [r["metadata"]["name"] for r in store.by_index(shared_vs)] == ["a"]
    store.delete(rollout("a", istio={}))
    assert store.by_index(shared_vs) == []


def test_every_router_kind_is_watched_smi_in_every_version() -> None:
    assert set(WATCHED) == {"VirtualService", "DestinationRule", "TrafficSplit", "HTTPRoute"}
    assert WATCHED["VirtualService"] == (VIRTUALSERVICES,)
    assert WATCHED["DestinationRule"] == (DESTINATIONRULES,)
    assert WATCHED["HTTPRoute"] == (HTTPROUTES,)
    splits = WATCHED["TrafficSplit"]
    assert [r.version for r in splits] == ["v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"]
    assert {(r.group, r.plural, r.kind) for r in splits} == {(TRAFFICSPLITS.group, "trafficsplits", "TrafficSplit")}


# -- the optional informer -----------------------------------------------------------------------------------------

ListAnswer = tuple[list[Body], str] | Exception | object
WatchScript = list[tuple[str, Body]] | Exception


def not_found() -> NotFound:
    return NotFound(status=404, reason="NotFound", message="the server could not find the requested resource")


def forbidden() -> ApiError:
    return ApiError(status=403, reason="Forbidden", message="cannot list resource")


class ServedClient:
    """Answers list and watch per resource ("plural/version") from scripts; the last list answer repeats, a resource
    without a script is not served (404), and a watch with no script left blocks until cancelled. A resource with a
    feed is watched from it for good: what a test puts there arrives as watch events."""

    def __init__(self, lists: dict[str, list[ListAnswer]], watches: dict[str, list[WatchScript]] | None = None,
                 feeds: tuple[str, ...] = ()) -> None:
        self.lists = lists
        self.watches = watches or {}
        self.feeds: dict[str, asyncio.Queue[tuple[str, Body]]] = {name: asyncio.Queue() for name in feeds}
        self.list_calls: list[str] = []
        self.watch_calls: list[tuple[str, str]] = []

    async def list(self, resource: Resource, *, namespace: str | None = None,
                   label_selector: str | None = None) -> tuple[list[Body], ResourceVersion]:
        name = f"{resource.plural}/{resource.version}"
        self.list_calls.append(name)
        answers = self.lists.get(name)
        if not answers:
            raise not_found()
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer is HANG:
            await asyncio.Event().wait()
        if isinstance(answer, Exception):
            raise answer
        items, rv = cast(tuple[list[Body], str], answer)
        return [dict(item) for item in items], ResourceVersion(rv)

    async def watch(self, resource: Resource, *, resource_version: ResourceVersion, namespace: str | None = None,
                    label_selector: str | None = None, timeout_seconds: int = 300) -> AsyncIterator[tuple[str, Body]]:
        name = f"{resource.plural}/{resource.version}"
        self.watch_calls.append((name, resource_version))
        if name in self.feeds:
            while True:
                yield await self.feeds[name].get()
        scripts = self.watches.get(name)
        if not scripts:
            await asyncio.Event().wait()
            return
        script = scripts.pop(0)
        if isinstance(script, Exception):
            raise script
        for event in script:
            yield event




def optional_informer(client: ServedClient, recorder: Recorder, *, resource: Resource = VIRTUALSERVICES,
                      fallbacks: tuple[Resource, ...] = (), namespaces: tuple[str, ...] = ("ns",)) -> Informer:
    return Informer(client, resource, fallbacks=fallbacks, namespaces=namespaces, settings=FAST, store=Store(),
                    on_change=recorder, optional=True, transform=metadata_only)


def logged(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name == "rollout.watching"]


async def test_missing_crd_counts_as_synced_is_logged_once_and_watched_once_installed(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rollout.watching")
    client = ServedClient(
        lists={"virtualservices/v1": [not_found(), not_found(), not_found(), ([router_object("web", "5")], "10")]},
        watches={"virtualservices/v1": [[("MODIFIED", router_object("web", "11"))]]},
    )
    recorder = Recorder()
    inf = optional_informer(client, recorder)
    async with running(inf) as task:
        await asyncio.wait_for(inf.synced.wait(), 1)
        await eventually(lambda: ("MODIFIED", "web", "11") in recorder.events)
        assert not task.done()
    assert client.list_calls == ["virtualservices/v1"] * 4, "looked for again until the CRD was there"
    assert client.watch_calls[0] == ("virtualservices/v1", "10")
    assert recorder.events[:2] == [("ADDED", "web", "5"), ("MODIFIED", "web", "11")]
    infos = logged(caplog, logging.INFO)
    assert len([m for m in infos if "does not serve virtualservices" in m]) == 1, infos
    assert any("virtualservices in ns can be listed now" in m for m in infos), infos
    assert not logged(caplog, logging.WARNING) and not logged(caplog, logging.ERROR)


async def test_missing_crd_is_logged_once_for_all_namespaces(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rollout.watching")
    client = ServedClient(lists={})
    inf = optional_informer(client, Recorder(), namespaces=("a", "b", "c"))
    async with running(inf):
        await asyncio.wait_for(inf.synced.wait(), 1)
        await eventually(lambda: len(client.list_calls) >= 9)
    assert len(logged(caplog, logging.INFO)) == 1


@pytest.mark.parametrize("where", ["list", "watch"])
async def test_forbidden_counts_as_synced_warns_once_and_is_asked_again(
        caplog: pytest.LogCaptureFixture, where: str) -> None:
    caplog.set_level(logging.INFO, logger="rollout.watching")
    if where == "list":
        client = ServedClient(lists={"virtualservices/v1": [forbidden(), forbidden(), ([], "10")]},
                              watches={"virtualservices/v1": [[("ADDED", router_object("web", "11"))]]})
    else:
        client = ServedClient(lists={"virtualservices/v1": [([], "10"), ([], "20")]},
                              watches={"virtualservices/v1": [forbidden(), forbidden(),
                                                              [("ADDED", router_object("web", "21"))]]})
    recorder = Recorder()
    inf = optional_informer(client, recorder)
    async with running(inf):
        await asyncio.wait_for(inf.synced.wait(), 1)
        await eventually(lambda: [e[:2] for e in recorder.events] == [("ADDED", "web")])
    warnings = logged(caplog, logging.WARNING)
    assert len(warnings) == 1 and f"not allowed to {where} virtualservices in ns" in warnings[0], warnings
    assert any(f"can be {where}ed now" in m for m in logged(caplog, logging.INFO))
    assert not logged(caplog, logging.ERROR)


async def test_a_missing_resource_is_looked_for_again_after_the_long_delay_not_the_error_backoff(
        monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recorded)
    client = ServedClient(lists={"virtualservices/v1": [not_found(), forbidden(), ([], "1")]})
    settings = WatchSettings(error_backoff=(0.5,), unavailable_retry_seconds=60.0)
    inf = Informer(client, VIRTUALSERVICES, namespaces=("ns",), settings=settings, store=Store(),
                   on_change=Recorder(), optional=True)
    async with running(inf):
        await eventually(lambda: bool(client.watch_calls))
    assert [d for d in delays if d in (0.5, 60.0)] == [60.0, 60.0]


async def test_a_required_informer_is_not_synced_by_a_missing_crd() -> None:
    client = ServedClient(lists={})
    inf = Informer(client, VIRTUALSERVICES, namespaces=("ns",), settings=FAST, store=Store(), on_change=Recorder())
    async with running(inf):
        await eventually(lambda: len(client.list_calls) >= 3)
        assert not inf.synced.is_set()


async def test_the_first_served_version_is_listed_and_watched() -> None:
    versions = WATCHED["TrafficSplit"]
    split = {**router_object("web", "5"), "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit"}
    client = ServedClient(lists={"trafficsplits/v1alpha2": [([split], "10")]})
    recorder = Recorder()
    inf = optional_informer(client, recorder, resource=versions[0], fallbacks=versions[1:])
    async with running(inf):
        await asyncio.wait_for(inf.synced.wait(), 1)
        await eventually(lambda: bool(client.watch_calls))
    assert client.list_calls == ["trafficsplits/v1alpha4", "trafficsplits/v1alpha3", "trafficsplits/v1alpha2"]
    assert client.watch_calls == [("trafficsplits/v1alpha2", "10")]
    assert recorder.events == [("ADDED", "web", "5")]


async def test_router_stores_keep_only_what_names_the_object() -> None:
    client = ServedClient(lists={"virtualservices/v1": [([router_object("web", "5", big=True)], "10")]},
                          feeds=("virtualservices/v1",))
    seen: list[Body] = []
    inf = Informer(client, VIRTUALSERVICES, namespaces=("ns",), settings=FAST, store=Store(),
                   on_change=lambda _, body: seen.append(body), optional=True, transform=metadata_only)
    async with running(inf):
        await asyncio.wait_for(inf.synced.wait(), 1)
        assert inf.store.get(ObjectKey("ns", "web")) == {
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "ns", "uid": "uid-web", "resourceVersion": "5"}}
        client.feeds["virtualservices/v1"].put_nowait(("DELETED", router_object("web", "6", big=True)))
        await eventually(lambda: len(seen) == 2)
    assert all(set(body) == {"apiVersion", "kind", "metadata"} for body in seen)
    assert len(inf.store) == 0


# -- the controller ------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def controller_running(client: ServedClient) -> AsyncIterator[Controller]:
    controller = Controller(cast(KubeClient, client), Settings(namespaces=("ns",), watch=FAST))
    async with background(controller.run()):
        yield controller


async def test_controller_is_ready_without_any_router_crd_or_right() -> None:
    core: dict[str, list[ListAnswer]] = {"rollouts/v1alpha1": [([], "1")], "replicasets/v1": [([], "1")],
                                         "analysisruns/v1alpha1": [([], "1")], "poddisruptionbudgets/v1": [([], "1")]}
    # No TrafficSplit or HTTPRoute CRD, DestinationRules forbidden, VirtualServices still listing (a slow mesh).
    client = ServedClient(lists={**core, "destinationrules/v1": [forbidden()], "virtualservices/v1": [HANG]})
    async with controller_running(client) as controller:
        await eventually(controller.ready)
        await eventually(lambda: "workers" in {task.get_name() for task in asyncio.all_tasks()})
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert {"informer:virtualservices", "informer:destinationrules", "informer:trafficsplits",
                "informer:httproutes"} <= names


async def test_a_changed_router_object_wakes_the_rollouts_using_it() -> None:
    uses_web = {"virtualService": {"name": "web"}}
    client = ServedClient(
        lists={"rollouts/v1alpha1": [([rollout("a", istio=uses_web), rollout("b", istio=uses_web),
                                       rollout("c", istio={"virtualService": {"name": "other"}})], "1")],
               # The ReplicaSets never list: the workers never start, so what is woken stays in the queue.
               "replicasets/v1": [HANG], "analysisruns/v1alpha1": [([], "1")],
               "virtualservices/v1": [([], "2")]},
        feeds=("virtualservices/v1",),
    )
    feed = client.feeds["virtualservices/v1"]

    async def woken() -> set[ObjectKey]:
        await eventually(lambda: len(controller.queue) == 2)
        keys = {await controller.queue.get(), await controller.queue.get()}
        for key in keys:
            controller.queue.done(key)
        return keys

    async with controller_running(client) as controller:
        await eventually(lambda: len(controller.queue) == 3)  # the Rollouts as listed
        for _ in range(3):
            controller.queue.done(await controller.queue.get())
        feed.put_nowait(("ADDED", router_object("unused", "3")))
        feed.put_nowait(("MODIFIED", router_object("web", "4")))
        assert await woken() == {ObjectKey("ns", "a"), ObjectKey("ns", "b")}
        feed.put_nowait(("DELETED", router_object("web", "5")))
        assert await woken() == {ObjectKey("ns", "a"), ObjectKey("ns", "b")}
        assert len(controller.queue) == 0
