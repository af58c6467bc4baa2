"""Every traffic router on the real control plane, with the routers' upstream CRDs (SMI TrafficSplit, Gateway API,
Istio) installed by devcluster: a full canary walk and an abort per router, with the router's object read at each
step, and the user mistakes each router can meet reported as InvalidSpec without hurting the controller.

The walk is the same for all: v1 Healthy at 100% stable, then v2 through setWeight 20, pause, setWeight 60, pause,
promotion (Healthy on v2, 100% stable again). Host-level Istio is covered by test_canary.py.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from rollout.kube import (
    DESTINATIONRULES,
    EVENTS,
    HTTPROUTES,
    ROLLOUTS,
    SERVICES,
    TRAFFICSPLITS,
    VIRTUALSERVICES,
    Body,
    KubeClient,
    Resource,
)
from strategies.model import HASH_LABEL
from tests.integration.kit import (
    ControllerProcess,
    condition,
    patch_status,
    paused_at,
    replica_sets,
    resume,
    rollout_body,
    selector_hash,
    service_body,
    set_image,
    status,
    wait_for,
    wait_status,
)

GATEWAYS = Resource("gateway.networking.k8s.io", "v1", "gateways", "Gateway")
GATEWAYCLASSES = Resource("gateway.networking.k8s.io", "v1", "gatewayclasses", "GatewayClass", namespaced=False)
STEPS: list[Body] = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}]
SUBSETS = {"name": "web", "stableSubsetName": "stable", "canarySubsetName": "canary"}

Weights = Callable[[], Awaitable[set[tuple[int, int]]]]  # every split place's (stable, canary) weights
Sides = Callable[[], Awaitable[tuple[str | None, str | None]]]  # the hashes the stable and canary sides select


def _rollout(routing: Body, *, services: bool = True, **spec: Any) -> Body:
    body = rollout_body(steps=STEPS, **spec)
    canary = body["spec"]["strategy"]["canary"]
    canary["trafficRouting"] = routing
    if not services:
        del canary["stableService"], canary["canaryService"]
    return body


async def _create(kube: KubeClient, ns: str, *objects: tuple[Resource, Body]) -> None:
    for resource, body in objects:
        await kube.create(resource, body, namespace=ns)


async def _services(kube: KubeClient, ns: str, *names: str) -> None:
    await _create(kube, ns, *((SERVICES, service_body(name)) for name in names))


async def _healthy(kube: KubeClient, ns: str, *, stable: str | None = None) -> Body:
    return await wait_status(
        kube, ns, lambda st: st.get("phase") == "Healthy" and (stable is None or st.get("stableHash") == stable),
        what=f"Healthy{' on ' + stable if stable else ''}",
    )


async def _event_reasons(kube: KubeClient, ns: str, *wanted: str) -> list[str]:
    """The namespace's Event reasons once all of `wanted` are there (Events are written after the status)."""
    async def listed() -> list[str] | None:
        items, _ = await kube.list(EVENTS, namespace=ns)
        reasons = [e["reason"] for e in items]
        return reasons if all(w in reasons for w in wanted) else None

    return await wait_for(listed, what=f"Events {', '.join(wanted)}", timeout=15)


async def _service_sides(kube: KubeClient, ns: str) -> tuple[str | None, str | None]:
    return await selector_hash(kube, ns, "web-stable"), await selector_hash(kube, ns, "web-canary")


async def _subset_sides(kube: KubeClient, ns: str) -> tuple[str | None, str | None]:
    rule = await kube.get(DESTINATIONRULES, name="web", namespace=ns)
    labels = {s["name"]: (s.get("labels") or {}).get(HASH_LABEL) for s in rule["spec"]["subsets"]}
    return labels["stable"], labels["canary"]


async def _walk(kube: KubeClient, ns: str, weights: Weights, sides: Sides) -> tuple[str, str]:
    """v1 to v2 through every step, checking the router's weights and each side's pods; returns (v1, v2)."""
    v1 = str((await _healthy(kube, ns))["stableHash"])
    assert await weights() == {(100, 0)}
    assert await sides() == (v1, v1)
    await set_image(kube, ns, "registry.example/web:2")
    v2 = ""
    for index, canary in ((1, 20), (3, 60)):
        st = await wait_status(kube, ns, paused_at(index), what=f"paused at step {index} ({canary}%)")
        v2 = str(st["canaryHash"])
        assert st["canaryWeight"] == canary
        assert await weights() == {(100 - canary, canary)}
        assert await sides() == (v1, v2)
        await resume(kube, ns)
    await _healthy(kube, ns, stable=v2)
    assert await weights() == {(100, 0)}
    assert await sides() == (v2, v2)
    await _event_reasons(kube, ns, "TrafficWeightUpdated", "RolloutCompleted")
    return v1, v2


async def _abort_at_sixty(kube: KubeClient, ns: str, weights: Weights, sides: Sides) -> None:
    """v2 walked to 60%, then aborted: all traffic back on v1, and the canary side selecting v1 again."""
    v1 = str((await _healthy(kube, ns))["stableHash"])
    await set_image(kube, ns, "registry.example/web:2")
    await wait_status(kube, ns, paused_at(1), what="paused at 20%")
    await resume(kube, ns)
    st = await wait_status(kube, ns, paused_at(3), what="paused at 60%")
    assert await weights() == {(40, 60)}
    assert await sides() == (v1, st["canaryHash"])
    await patch_status(kube, ns, {"abort": True})
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Degraded", what="aborted")
    assert condition(st, "Degraded")["reason"] == "RolloutAborted"
    assert await weights() == {(100, 0)}
    assert await sides() == (v1, v1)
    await _event_reasons(kube, ns, "RolloutAborted")


async def _invalid(kube: KubeClient, ns: str, needle: str, controller: ControllerProcess) -> None:
    st = await wait_status(kube, ns, lambda s: needle in condition(s, "InvalidSpec").get("message", ""),
                           what=f"InvalidSpec mentioning {needle!r}")
    assert condition(st, "InvalidSpec")["status"] == "True"
    assert st["phase"] == "Degraded"
    await _event_reasons(kube, ns, "InvalidSpec")
    assert controller.alive


# -- SMI ---------------------------------------------------------------------------------------------------------


SMI = {"smi": {"trafficSplitName": "web-split", "rootService": "web"}}


def _smi_weights(kube: KubeClient, ns: str) -> Weights:
    async def read() -> set[tuple[int, int]]:
        split = await kube.get(TRAFFICSPLITS, name="web-split", namespace=ns)
        assert split["spec"]["service"] == "web"
        by_service = {b["service"]: int(b["weight"]) for b in split["spec"]["backends"]}
        assert set(by_service) == {"web-stable", "web-canary"}
        return {(by_service["web-stable"], by_service["web-canary"])}

    return read


async def test_smi_walk_creates_and_owns_the_traffic_split(kube: KubeClient, namespace: str,
                                                           controller: ControllerProcess) -> None:
    ns = namespace
    await _services(kube, ns, "web", "web-stable", "web-canary")
    rollout = await kube.create(ROLLOUTS, _rollout(SMI), namespace=ns)
    await _walk(kube, ns, _smi_weights(kube, ns), lambda: _service_sides(kube, ns))
    split = await kube.get(TRAFFICSPLITS, name="web-split", namespace=ns)
    (owner,) = split["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Rollout", "web", rollout["metadata"]["uid"], True)
    assert split["metadata"]["labels"]["sluice.dev/rollout"] == "web"


async def test_smi_abort_sends_everything_back_to_stable(kube: KubeClient, namespace: str,
                                                         controller: ControllerProcess) -> None:
    ns = namespace
    await _services(kube, ns, "web", "web-stable", "web-canary")
    await kube.create(ROLLOUTS, _rollout(SMI), namespace=ns)
    await _abort_at_sixty(kube, ns, _smi_weights(kube, ns), lambda: _service_sides(kube, ns))


async def test_smi_split_edited_by_hand_is_rewritten(kube: KubeClient, namespace: str,
                                                     controller: ControllerProcess) -> None:
    ns = namespace
    await _services(kube, ns, "web", "web-stable", "web-canary")
    await kube.create(ROLLOUTS, _rollout(SMI), namespace=ns)
    await _healthy(kube, ns)
    await kube.patch(TRAFFICSPLITS, name="web-split", namespace=ns, patch={"spec": {"backends": [
        {"service": "web-stable", "weight": 50}, {"service": "web-canary", "weight": 0},
        {"service": "elsewhere", "weight": 50}]}})

    async def rewritten() -> bool:
        split = await kube.get(TRAFFICSPLITS, name="web-split", namespace=ns)
        return bool(split["spec"]["backends"] == [{"service": "web-stable", "weight": 100},
                                                  {"service": "web-canary", "weight": 0}])

    await wait_for(rewritten, what="the split put back within a resync", timeout=45)


async def test_smi_missing_root_service_and_foreign_split_are_reported(kube: KubeClient, namespace: str,
                                                                       controller: ControllerProcess) -> None:
    ns = namespace
    await _services(kube, ns, "web-stable", "web-canary")
    await _create(kube, ns, (TRAFFICSPLITS, {
        "apiVersion": TRAFFICSPLITS.api_version, "kind": "TrafficSplit", "metadata": {"name": "web-split"},
        "spec": {"service": "web", "backends": [{"service": "web-stable", "weight": 100}]}}))
    await kube.create(ROLLOUTS, _rollout(SMI), namespace=ns)
    await _invalid(kube, ns, f"TrafficSplit root Service {ns}/web not found", controller)
    await _services(kube, ns, "web")
    await _invalid(kube, ns, f"TrafficSplit {ns}/web-split exists and is not controlled by this Rollout", controller)
    await kube.delete(TRAFFICSPLITS, name="web-split", namespace=ns)
    st = await _healthy(kube, ns)
    assert condition(st, "InvalidSpec")["status"] == "False"
    assert await _smi_weights(kube, ns)() == {(100, 0)}


# -- Gateway API -------------------------------------------------------------------------------------------------


def _gateway_weights(kube: KubeClient, ns: str, *, rules: tuple[str, ...] = ()) -> Weights:
    """(stable, canary) of the named rules (all when none), absent weights read as Gateway API's default, 1."""
    async def read() -> set[tuple[int, int]]:
        route = await kube.get(HTTPROUTES, name="web", namespace=ns)
        found = set()
        for rule in route["spec"]["rules"]:
            if rules and rule.get("name") not in rules:
                continue
            by_name = {ref["name"]: int(ref.get("weight", 1)) for ref in rule["backendRefs"]}
            found.add((by_name["web-stable"], by_name["web-canary"]))
        return found

    return read


def _backend(name: str, weight: int | None = None, **extra: Any) -> Body:
    return {"name": name, "port": 80, **({"weight": weight} if weight is not None else {}), **extra}


def _gateway_route(parent: Body, rules: list[Body]) -> Body:
    return {"apiVersion": HTTPROUTES.api_version, "kind": "HTTPRoute", "metadata": {"name": "web"},
            "spec": {"parentRefs": [parent], "hostnames": ["web.example"], "rules": rules}}


def _gateway_parent_route() -> Body:
    return _gateway_route({"name": "web-gateway", "sectionName": "http"}, [
        {"name": "primary", "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
         "filters": [{"type": "RequestHeaderModifier",
                      "requestHeaderModifier": {"add": [{"name": "x-served-by", "value": "web"}]}}],
         "backendRefs": [_backend("web-stable", 100), _backend("web-canary", 0)]},
        {"name": "static", "matches": [{"path": {"type": "PathPrefix", "value": "/static"}}],
         "backendRefs": [_backend("web-static")]},
    ])


@asynccontextmanager
async def _gateway(kube: KubeClient, ns: str) -> AsyncIterator[None]:
    """A GatewayClass (cluster-scoped: named after the namespace, deleted after) and a Gateway with one listener."""
    await kube.create(GATEWAYCLASSES, {"apiVersion": GATEWAYCLASSES.api_version, "kind": "GatewayClass",
                                       "metadata": {"name": ns},
                                       "spec": {"controllerName": "example.com/gateway-controller"}})
    try:
        await _create(kube, ns, (GATEWAYS, {
            "apiVersion": GATEWAYS.api_version, "kind": "Gateway", "metadata": {"name": "web-gateway"},
            "spec": {"gatewayClassName": ns, "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}))
        yield
    finally:
        await kube.delete(GATEWAYCLASSES, name=ns)


def _without_weights(route: Body) -> Body:
    spec: Body = copy.deepcopy(route["spec"])
    for rule in spec["rules"]:
        for ref in rule["backendRefs"]:
            if ref["name"] in ("web-stable", "web-canary"):
                ref.pop("weight", None)
    return spec


GATEWAY = {"gatewayAPI": {"httpRoute": "web", "rules": ["primary"]}}


async def test_gateway_api_walk_with_a_gateway_parent_touches_only_the_weights(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    ns = namespace
    async with _gateway(kube, ns):
        await _services(kube, ns, "web-stable", "web-canary", "web-static")
        written = await kube.create(HTTPROUTES, _gateway_parent_route(), namespace=ns)
        await kube.create(ROLLOUTS, _rollout(GATEWAY), namespace=ns)
        await _walk(kube, ns, _gateway_weights(kube, ns, rules=("primary",)), lambda: _service_sides(kube, ns))
        route = await kube.get(HTTPROUTES, name="web", namespace=ns)
        assert _without_weights(route) == _without_weights(written)
        assert route["spec"]["rules"][1]["backendRefs"][0].get("weight", 1) == 1


async def test_gateway_api_abort_with_a_gateway_parent(kube: KubeClient, namespace: str,
                                                       controller: ControllerProcess) -> None:
    ns = namespace
    async with _gateway(kube, ns):
        await _services(kube, ns, "web-stable", "web-canary", "web-static")
        await kube.create(HTTPROUTES, _gateway_parent_route(), namespace=ns)
        await kube.create(ROLLOUTS, _rollout(GATEWAY), namespace=ns)
        await _abort_at_sixty(kube, ns, _gateway_weights(kube, ns, rules=("primary",)),
                              lambda: _service_sides(kube, ns))


def _mesh_route(ns: str) -> Body:
    """Linkerd's mesh mode (GAMMA): the parent is the Service clients call. Unnamed rules, every one split; weights
    absent at first (1 and 1: an even split sluice must correct), references in every spelling the API allows."""
    return _gateway_route({"group": "", "kind": "Service", "name": "web", "port": 80}, [
        {"matches": [{"headers": [{"name": "x-canary", "value": "true"}]}],
         "backendRefs": [_backend("web-canary"), _backend("web-stable")]},
        {"backendRefs": [_backend("web-stable", 100, namespace=ns),
                         _backend("web-canary", 0, group="", kind="Service")]},
    ])


async def test_gateway_api_walk_with_a_service_parent_splits_every_rule(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    ns = namespace
    await _services(kube, ns, "web", "web-stable", "web-canary")
    written = await kube.create(HTTPROUTES, _mesh_route(ns), namespace=ns)
    assert await _gateway_weights(kube, ns)() == {(1, 1), (100, 0)}
    await kube.create(ROLLOUTS, _rollout({"gatewayAPI": {"httpRoute": "web"}}), namespace=ns)
    await _walk(kube, ns, _gateway_weights(kube, ns), lambda: _service_sides(kube, ns))
    assert _without_weights(await kube.get(HTTPROUTES, name="web", namespace=ns)) == _without_weights(written)


async def test_gateway_api_abort_with_a_service_parent(kube: KubeClient, namespace: str,
                                                       controller: ControllerProcess) -> None:
    ns = namespace
    await _services(kube, ns, "web", "web-stable", "web-canary")
    await kube.create(HTTPROUTES, _mesh_route(ns), namespace=ns)
    await kube.create(ROLLOUTS, _rollout({"gatewayAPI": {"httpRoute": "web"}}), namespace=ns)
    await _abort_at_sixty(kube, ns, _gateway_weights(kube, ns), lambda: _service_sides(kube, ns))


async def test_gateway_api_missing_route_rule_or_backend_is_reported(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    ns = namespace
    await _services(kube, ns, "web-stable", "web-canary")
    await kube.create(ROLLOUTS, _rollout({"gatewayAPI": {"httpRoute": "web", "rules": ["primary"]}}),
                      namespace=ns)
    await _invalid(kube, ns, f"HTTPRoute {ns}/web not found", controller)
    route = _gateway_route({"name": "web-gateway"}, [{"name": "main", "backendRefs": [_backend("web-stable")]}])
    await kube.create(HTTPROUTES, route, namespace=ns)
    await _invalid(kube, ns, "has no rule named 'primary' (rules: ['main'])", controller)
    await kube.patch(HTTPROUTES, name="web", namespace=ns, patch_type="json",
                     patch=[{"op": "replace", "path": "/spec/rules/0/name", "value": "primary"}])
    await _invalid(kube, ns, f"rule 'primary' of HTTPRoute {ns}/web has no backendRef for Service 'web-canary'",
                   controller)
    await kube.patch(HTTPROUTES, name="web", namespace=ns, patch_type="json",
                     patch=[{"op": "add", "path": "/spec/rules/0/backendRefs/-", "value": _backend("web-canary")}])
    st = await _healthy(kube, ns)
    assert condition(st, "InvalidSpec")["status"] == "False"
    assert await _gateway_weights(kube, ns)() == {(100, 0)}


# -- Istio DestinationRule subsets -------------------------------------------------------------------------------


def _destination_rule(*subsets: Body) -> Body:
    return {"apiVersion": DESTINATIONRULES.api_version, "kind": "DestinationRule", "metadata": {"name": "web"},
            "spec": {"host": "web", "subsets": list(subsets)}}


def _subset_virtual_service(ns: str) -> Body:
    return {"apiVersion": VIRTUALSERVICES.api_version, "kind": "VirtualService", "metadata": {"name": "web"},
            "spec": {"hosts": ["web"], "http": [
                {"name": "primary", "route": [
                    {"destination": {"host": f"web.{ns}.svc.cluster.local", "subset": "stable"}, "weight": 100},
                    {"destination": {"host": "web", "subset": "canary"}, "weight": 0}]},
                {"name": "other", "route": [{"destination": {"host": "unrelated"}}]},
            ]}}


def _subset_weights(kube: KubeClient, ns: str) -> Weights:
    async def read() -> set[tuple[int, int]]:
        vs = await kube.get(VIRTUALSERVICES, name="web", namespace=ns)
        route = next(r for r in vs["spec"]["http"] if r["name"] == "primary")["route"]
        by_subset = {d["destination"]["subset"]: int(d.get("weight", 0)) for d in route}
        return {(by_subset["stable"], by_subset["canary"])}

    return read


SUBSET_ROUTING = {"istio": {"virtualService": {"name": "web", "routes": ["primary"]}, "destinationRule": SUBSETS}}


async def _subset_app(kube: KubeClient, ns: str) -> None:
    """Subsets choose the pods, so no stable or canary Service; `minReadySeconds` keeps new pods unavailable for a
    few seconds, long enough to see that the canary subset waits for them."""
    await _create(kube, ns, (SERVICES, service_body("web")),
                  (DESTINATIONRULES, _destination_rule({"name": "stable", "labels": {"app": "web"}},
                                                       {"name": "canary"})),
                  (VIRTUALSERVICES, _subset_virtual_service(ns)))
    await kube.create(ROLLOUTS, _rollout(SUBSET_ROUTING, services=False, minReadySeconds=2), namespace=ns)


async def _canary_subset_waits_for_available_pods(kube: KubeClient, ns: str, v1: str) -> None:
    """After a new template: the canary subset gets the new hash only once its pods are available."""
    unavailable_seen = False

    async def moved() -> bool:
        nonlocal unavailable_seen
        v2 = (await status(kube, ns)).get("canaryHash")
        if v2 in (None, v1):
            return False
        _, canary = await _subset_sides(kube, ns)
        # Read after the subset: pods not available now were not available when the subset was read either.
        rs = (await replica_sets(kube, ns)).get(str(v2))
        if rs is None or not (rs.get("status") or {}).get("availableReplicas"):
            assert canary == v1, f"the canary subset selects {v2} before any of its pods is available"
            unavailable_seen = True
        return bool(canary == v2)

    await wait_for(moved, what="the canary subset to select the new revision", interval=0.1)
    assert unavailable_seen, "the new revision's pods were never seen unavailable: minReadySeconds too short?"


async def test_istio_subset_walk_moves_hashes_only_onto_available_pods(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    ns = namespace
    await _subset_app(kube, ns)
    v1 = str((await _healthy(kube, ns))["stableHash"])
    rule = await kube.get(DESTINATIONRULES, name="web", namespace=ns)
    assert rule["spec"]["subsets"][0]["labels"] == {"app": "web", HASH_LABEL: v1}  # the user's labels kept
    assert rule["spec"]["subsets"][1]["labels"] == {HASH_LABEL: v1}  # created where there were none
    await set_image(kube, ns, "registry.example/web:2")
    await _canary_subset_waits_for_available_pods(kube, ns, v1)
    weights = _subset_weights(kube, ns)
    for index, canary in ((1, 20), (3, 60)):
        st = await wait_status(kube, ns, paused_at(index), what=f"paused at step {index} ({canary}%)")
        v2 = str(st["canaryHash"])
        assert await weights() == {(100 - canary, canary)}
        assert await _subset_sides(kube, ns) == (v1, v2)
        await resume(kube, ns)
    await _healthy(kube, ns, stable=v2)
    assert await weights() == {(100, 0)}
    assert await _subset_sides(kube, ns) == (v2, v2)
    vs = await kube.get(VIRTUALSERVICES, name="web", namespace=ns)
    assert vs["spec"]["http"][1] == _subset_virtual_service(ns)["spec"]["http"][1]


async def test_istio_subset_abort_points_the_canary_subset_back_at_stable(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    ns = namespace
    await _subset_app(kube, ns)
    await _abort_at_sixty(kube, ns, _subset_weights(kube, ns), lambda: _subset_sides(kube, ns))


async def test_istio_subset_missing_rule_or_subset_is_reported(kube: KubeClient, namespace: str,
                                                               controller: ControllerProcess) -> None:
    ns = namespace
    await _create(kube, ns, (VIRTUALSERVICES, _subset_virtual_service(ns)))
    await kube.create(ROLLOUTS, _rollout(SUBSET_ROUTING, services=False), namespace=ns)
    await _invalid(kube, ns, f"DestinationRule {ns}/web not found", controller)
    await _create(kube, ns, (DESTINATIONRULES, _destination_rule({"name": "stable"}, {"name": "v2"})))
    await _invalid(kube, ns, f"DestinationRule {ns}/web has no subset named 'canary'", controller)
    await kube.patch(DESTINATIONRULES, name="web", namespace=ns, patch_type="json",
                     patch=[{"op": "replace", "path": "/spec/subsets/1/name", "value": "canary"}])
    v1 = str((await _healthy(kube, ns))["stableHash"])
    assert await _subset_sides(kube, ns) == (v1, v1)
    assert await _subset_weights(kube, ns)() == {(100, 0)}
