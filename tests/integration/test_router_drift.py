"""Someone else's change to a traffic router's object is put back within seconds, not at the next resync.

The controller runs with `--resync-seconds 600`, so nothing but its watch on the router's objects can wake the
Rollout in time: for each router (Istio host-level and DestinationRule subsets, SMI, Gateway API) a Rollout is
paused at a step, a GitOps tool or a human changes the object, and the test waits for sluice's value to come back
and for the Event saying so. sluice's own writes wake the Rollout too; those reconciles must do nothing, and a role
that may not watch a router's kind must not keep the controller from becoming ready.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devcluster import helm
from rollout.kube import (
    DESTINATIONRULES,
    EVENTS,
    HTTPROUTES,
    SERVICES,
    TRAFFICSPLITS,
    VIRTUALSERVICES,
    Body,
    KubeClient,
)
from strategies.model import HASH_LABEL
from tests.integration.kit import (
    CLUSTER_ROLES,
    ControllerProcess,
    create_app,
    grant,
    paused_at,
    resume,
    rollout_body,
    service_body,
    set_image,
    wait_for,
    wait_status,
    weights,
)

pytestmark = pytest.mark.integration

# A resync later than any test: only a watch event can wake a Rollout in time. The kit passes --resync-seconds 15;
# argparse keeps the last value given, so this one wins.
CONTROLLER_ARGS = ["--resync-seconds", "600"]
PUT_BACK_WITHIN = 10.0


@pytest.fixture
def slow_resync(control_plane: Any, namespace: str, tmp_path: Path) -> Iterator[ControllerProcess]:
    proc = ControllerProcess(kubeconfig=control_plane.kubeconfig, namespace=namespace,
                             log_path=tmp_path / "controller.log", extra_args=CONTROLLER_ARGS)
    proc.start()
    yield proc
    proc.stop_and_show_log()


async def _events(kube: KubeClient, ns: str, reason: str, *, containing: str = "") -> list[Body]:
    """The namespace's Events `reason` whose message contains `containing`, oldest first."""
    items, _ = await kube.list(EVENTS, namespace=ns)
    found = [e for e in items if e["reason"] == reason and containing in e["message"]]
    return sorted(found, key=lambda e: (e["metadata"]["creationTimestamp"], int(e["metadata"]["resourceVersion"])))


async def _event(kube: KubeClient, ns: str, reason: str, *, after: int = 0, containing: str = "") -> Body:
    """The newest such Event once there are more than `after` of them (Events are written after the status)."""
    async def probe() -> Body | None:
        found = await _events(kube, ns, reason, containing=containing)
        return found[-1] if len(found) > after else None

    return await wait_for(probe, what=f"a new {reason} Event", timeout=15)


async def _walk_to_first_pause(kube: KubeClient, ns: str) -> str:
    """v1 Healthy, then v2 paused after `setWeight: 10`; returns v2's hash."""
    await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="v1 Healthy")
    await set_image(kube, ns, "registry.example/web:2")
    st = await wait_status(kube, ns, paused_at(1), what="paused after setWeight 10")
    return str(st["canaryHash"])


async def _put_back(what: str, probe: Callable[[], Awaitable[bool]]) -> float:
    """Wait for `probe` to see sluice's value again; returns how long it took."""
    started = time.monotonic()
    await wait_for(probe, what=what, timeout=PUT_BACK_WITHIN, interval=0.1)
    return time.monotonic() - started


async def test_virtual_service_weights_changed_by_hand_are_put_back_within_seconds(
        kube: KubeClient, namespace: str, slow_resync: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns)
    await _walk_to_first_pause(kube, ns)
    await kube.patch(VIRTUALSERVICES, name="web", namespace=ns, patch_type="json", patch=[
        {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 30},
        {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 70},
    ])

    async def restored() -> bool:
        return await weights(kube, ns) == (90, 10)

    await _put_back("the VirtualService's weights back at 90/10", restored)
    drift = await _event(kube, ns, "TrafficWeightDrift")
    assert drift["type"] == "Warning" and "canary 70" in drift["message"]


async def test_destination_rule_subset_changed_by_hand_is_put_back_within_seconds(
        kube: KubeClient, namespace: str, slow_resync: ControllerProcess) -> None:
    ns = namespace
    await kube.create(SERVICES, service_body("web"), namespace=ns)
    await kube.create(DESTINATIONRULES, {
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "web"},
        "spec": {"host": "web", "subsets": [{"name": "stable", "labels": {"app": "web"}},
                                            {"name": "canary", "labels": {"app": "web"}}]},
    }, namespace=ns)
    await kube.create(VIRTUALSERVICES, {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "web"},
        "spec": {"hosts": ["web"], "http": [{"name": "primary", "route": [
            {"destination": {"host": "web", "subset": "stable"}, "weight": 100},
            {"destination": {"host": "web", "subset": "canary"}, "weight": 0},
        ]}]},
    }, namespace=ns)
    body = rollout_body()
    canary = body["spec"]["strategy"]["canary"]
    del canary["stableService"], canary["canaryService"]
    canary["trafficRouting"]["istio"]["destinationRule"] = {
        "name": "web", "stableSubsetName": "stable", "canarySubsetName": "canary"}
    await create_app(kube, ns, body, virtual_service=False, services=False)
    v2 = await _walk_to_first_pause(kube, ns)

    async def canary_subset_hash() -> str | None:
        rule = await kube.get(DESTINATIONRULES, name="web", namespace=ns)
        value = rule["spec"]["subsets"][1]["labels"].get(HASH_LABEL)
        return str(value) if value is not None else None

    assert await canary_subset_hash() == v2
    selected = len(await _events(kube, ns, "ServiceSelectorUpdated", containing="canary subset"))
    # Someone points the canary subset at the stable pods.
    v1 = (await kube.get(DESTINATIONRULES, name="web", namespace=ns))["spec"]["subsets"][0]["labels"][HASH_LABEL]
    await kube.patch(DESTINATIONRULES, name="web", namespace=ns, patch_type="json", patch=[
        {"op": "replace", "path": f"/spec/subsets/1/labels/{HASH_LABEL.replace('/', '~1')}", "value": v1},
    ])

    async def restored() -> bool:
        return await canary_subset_hash() == v2

    await _put_back("the canary subset selecting v2 again", restored)
    await _event(kube, ns, "ServiceSelectorUpdated", after=selected, containing="canary subset")
    route = (await kube.get(VIRTUALSERVICES, name="web", namespace=ns))["spec"]["http"][0]["route"]
    assert {d["destination"]["subset"]: d["weight"] for d in route} == {"stable": 90, "canary": 10}


async def test_traffic_split_changed_by_hand_is_put_back_within_seconds(
        kube: KubeClient, namespace: str, slow_resync: ControllerProcess) -> None:
    ns = namespace
    await kube.create(SERVICES, service_body("web"), namespace=ns)
    body = rollout_body()
    body["spec"]["strategy"]["canary"]["trafficRouting"] = {"smi": {"trafficSplitName": "web", "rootService": "web"}}
    await create_app(kube, ns, body, virtual_service=False)
    await _walk_to_first_pause(kube, ns)

    async def split_weights() -> dict[str, int]:
        split = await kube.get(TRAFFICSPLITS, name="web", namespace=ns)
        return {b["service"]: int(b["weight"]) for b in split["spec"]["backends"]}

    assert await split_weights() == {"web-stable": 90, "web-canary": 10}
    await kube.patch(TRAFFICSPLITS, name="web", namespace=ns, patch={"spec": {"backends": [
        {"service": "web-stable", "weight": 30}, {"service": "web-canary", "weight": 70}]}})

    async def restored() -> bool:
        return await split_weights() == {"web-stable": 90, "web-canary": 10}

    await _put_back("the TrafficSplit back at 90/10", restored)
    drift = await _event(kube, ns, "TrafficWeightDrift")
    assert "canary 70" in drift["message"]


async def test_http_route_weights_changed_by_hand_are_put_back_within_seconds(
        kube: KubeClient, namespace: str, slow_resync: ControllerProcess) -> None:
    ns = namespace
    await kube.create(HTTPROUTES, {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "public", "namespace": "gateways"}], "hostnames": ["web.example"],
                 "rules": [{"name": "primary", "backendRefs": [{"name": "web-stable", "port": 80, "weight": 100},
                                                               {"name": "web-canary", "port": 80, "weight": 0}]}]},
    }, namespace=ns)
    body = rollout_body()
    body["spec"]["strategy"]["canary"]["trafficRouting"] = {"gatewayAPI": {"httpRoute": "web", "rules": ["primary"]}}
    await create_app(kube, ns, body, virtual_service=False)
    await _walk_to_first_pause(kube, ns)

    async def route_weights() -> dict[str, int]:
        route = await kube.get(HTTPROUTES, name="web", namespace=ns)
        return {b["name"]: int(b.get("weight", 1)) for b in route["spec"]["rules"][0]["backendRefs"]}

    assert await route_weights() == {"web-stable": 90, "web-canary": 10}
    await kube.patch(HTTPROUTES, name="web", namespace=ns, patch_type="json", patch=[
        {"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight", "value": 30},
        {"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": 70},
    ])

    async def restored() -> bool:
        return await route_weights() == {"web-stable": 90, "web-canary": 10}

    await _put_back("the HTTPRoute back at 90/10", restored)
    drift = await _event(kube, ns, "TrafficWeightDrift")
    assert "canary 70" in drift["message"]


async def _reconciles(session: aiohttp.ClientSession, url: str) -> int:
    """How many reconciles the controller has run, from its /metrics."""
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    counts = re.findall(r"^sluice_reconcile_duration_seconds_count\{[^}]*\} ([0-9.e+]+)$", text, re.MULTILINE)
    return int(sum(float(c) for c in counts))


async def test_sluices_own_weight_writes_do_not_start_a_reconcile_loop(
        kube: KubeClient, namespace: str, slow_resync: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns)
    await _walk_to_first_pause(kube, ns)
    await resume(kube, ns)
    await wait_status(kube, ns, paused_at(3), what="paused at 50%")
    assert await weights(kube, ns) == (50, 50)
    await _event(kube, ns, "TrafficWeightUpdated", containing="-> 50")
    updates = len(await _events(kube, ns, "TrafficWeightUpdated"))
    url = await slow_resync.api_url()
    async with aiohttp.ClientSession() as session:
        # Our write of 50% came back as a watch event and woke the Rollout once more; that reconcile wrote nothing,
        # so nothing else follows. A loop would show as a count that keeps climbing.
        before = await _reconciles(session, url)

        async def steady() -> bool:
            return await _reconciles(session, url) - before <= 2

        await _holds(steady, seconds=5.0, what="at most 2 reconciles in a steady state (more: a loop)")
        print(f"reconciles in the steady state: {await _reconciles(session, url) - before}")
    assert len(await _events(kube, ns, "TrafficWeightUpdated")) == updates
    assert await weights(kube, ns) == (50, 50)


async def _holds(check: Callable[[], Awaitable[bool]], *, seconds: float, what: str) -> None:
    """The opposite of wait_for: `check` stays true for `seconds` (sampled every 0.25 s), failing at the first miss.
    Only a steady state can be shown this way: nothing that should happen is waited for."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await check(), f"no longer true: {what}"
        await asyncio.sleep(0.25)


async def test_controller_not_allowed_to_watch_http_routes_becomes_ready_and_corrects_the_rest(
        kube: KubeClient, namespace: str, control_plane: Any, tmp_path: Path) -> None:
    ns, user = namespace, f"sluice-{namespace}"
    # The chart's controller rules for an install whose role leaves HTTPRoutes out, on a cluster with their CRD.
    rules = helm.controller_rules({"trafficRouting": {"gatewayAPI": {"enabled": False}}})
    assert not [r for r in rules if "httproutes" in r["resources"]]
    await grant(kube, ns, user, rules)
    proc = ControllerProcess(kubeconfig=control_plane.client_kubeconfig(user, []), namespace=ns,
                             log_path=tmp_path / "controller.log", extra_args=CONTROLLER_ARGS)
    proc.start()
    try:
        url = await proc.api_url()
        async with aiohttp.ClientSession() as session:
            async def ready() -> bool:
                async with session.get(url + "/readyz") as response:
                    return response.status == 200

            await wait_for(ready, what="/readyz without the right to watch HTTPRoutes", timeout=30)
        await create_app(kube, ns)
        await _walk_to_first_pause(kube, ns)
        # The VirtualService watch works all the same.
        await kube.patch(VIRTUALSERVICES, name="web", namespace=ns, patch_type="json", patch=[
            {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 0},
            {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 100},
        ])

        async def restored() -> bool:
            return await weights(kube, ns) == (90, 10)

        await _put_back("the VirtualService's weights back at 90/10", restored)
        log = proc.log_path.read_text()
        forbidden = [line for line in log.splitlines() if "not allowed to list httproutes" in line]
        assert len(forbidden) == 1 and '"level":"warning"' in forbidden[0], forbidden
        assert proc.alive
    finally:
        proc.stop()
        print(f"--- controller log ---\n{proc.log_tail()}")
        await kube.delete(CLUSTER_ROLES, name=f"{ns}-sluice")
