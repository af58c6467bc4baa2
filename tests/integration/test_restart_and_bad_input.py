"""Restart safety and bad input on the real control plane.

The controller is SIGKILLed at arbitrary points of a walk; a fresh process must continue without repeating or
skipping a step and without ever moving canary weight backwards. Invalid Rollouts get a clear status, are retried,
never crash the controller and never disturb other Rollouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from typing import Any

import pytest

from rollout.kube import EVENTS, REPLICASETS, ROLLOUTS, SERVICES, VIRTUALSERVICES, ApiError, KubeClient
from strategies.model import template_hash
from tests.integration.kit import (
    ControllerProcess,
    condition,
    create_app,
    paused_at,
    resume,
    rollout_body,
    service_body,
    set_image,
    virtual_service_body,
    wait_status,
    weights,
)


async def _record_weights(kube: KubeClient, ns: str, seen: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(ApiError):
            seen.append((await weights(kube, ns))[1])
        await asyncio.sleep(0.05)


async def test_killed_controller_continues_without_repeating_or_skipping_steps(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    ns = namespace
    steps: list[dict[str, Any]] = [
        {"setWeight": 10}, {"pause": {"duration": "3s"}}, {"setWeight": 30}, {"setWeight": 60},
        {"pause": {}}, {"setWeight": 100}, {"pause": {"duration": "2s"}},
    ]
    await create_app(kube, ns, rollout_body(steps=steps, replicas=5))
    await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="v1 Healthy")
    seen: list[int] = []
    stop = asyncio.Event()
    recorder = asyncio.create_task(_record_weights(kube, ns, seen, stop))
    try:
        await set_image(kube, ns, "registry.example/web:2")
        rng = random.Random(7)
        # Kill during the walk towards the indefinite pause: at setWeight steps and during the timed pause.
        for _ in range(4):
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            controller.kill()
            await asyncio.sleep(0.2)
            controller.start()
        await wait_status(kube, ns, paused_at(4), what="indefinite pause after the kills", timeout=90)
        assert await weights(kube, ns) == (40, 60)
        controller.kill()
        await resume(kube, ns)
        controller.start()
        await wait_status(kube, ns, paused_at(6), what="timed pause after the last setWeight")
        controller.kill()  # during the timed pause: its start time is in status, not in memory
        await asyncio.sleep(0.5)
        controller.start()
        st = await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash")
                               == s.get("canaryHash") and s.get("currentStepIndex") == 7,
                               what="promoted after restarts", timeout=60)
        assert st["canaryWeight"] == 0
    finally:
        stop.set()
        await recorder
    # Weight never moved backwards while the canary was in flight (it drops to 0 only at full promotion).
    in_flight = seen[: max(i for i, w in enumerate(seen) if w == 100) + 1] if 100 in seen else seen
    assert in_flight == sorted(in_flight), f"canary weight moved backwards: {in_flight}"
    assert set(in_flight) <= {0, 10, 30, 60, 100}
    items, _ = await kube.list(EVENTS, namespace=ns)
    completed = Counter(e["message"] for e in items if e["reason"] == "RolloutStepCompleted")
    assert all(count == 1 for count in completed.values()), f"a step completed twice: {completed}"
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="still healthy")
    assert st["stepDisplay"] == "7/7"


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda b: b["spec"]["strategy"]["canary"]["steps"].append({"setWeight": 150}), "setWeight"),
    (lambda b: b["spec"]["strategy"]["canary"]["steps"].append({"setWeight": 5, "pause": {}}), "exactly one action"),
    (lambda b: b["spec"]["strategy"]["canary"]["steps"].append({"pause": {"duration": "5 minutes"}}), "duration"),
    (lambda b: b["spec"].pop("selector"), "selector"),
    (lambda b: b["spec"]["strategy"]["canary"].pop("stableService"), "stableService"),
])
async def test_schema_invalid_rollout_rejected_naming_the_field(kube: KubeClient, namespace: str, mutate: object,
                                                                field: str) -> None:
    body = rollout_body()
    mutate(body)  # type: ignore[operator]
    with pytest.raises(ApiError) as info:
        await kube.create(ROLLOUTS, body, namespace=namespace)
    assert info.value.status == 422
    assert field in info.value.message


async def _invalid(kube: KubeClient, ns: str, name: str, needle: str) -> None:
    st = await wait_status(kube, ns, lambda s: condition(s, "InvalidSpec").get("status") == "True", name=name,
                           what=f"InvalidSpec mentioning {needle!r}")
    assert needle in condition(st, "InvalidSpec")["message"]
    assert st["phase"] == "Degraded"
    assert needle in st["message"]


async def test_missing_virtual_service_is_reported_and_recovers(kube: KubeClient, namespace: str,
                                                                controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns, virtual_service=False)
    await _invalid(kube, ns, "web", f"VirtualService {ns}/web not found")
    await kube.create(VIRTUALSERVICES, virtual_service_body(), namespace=ns)
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="healthy once the VS exists",
                           timeout=60)
    assert condition(st, "InvalidSpec")["status"] == "False"
    assert controller.alive


async def test_missing_route_is_reported(kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    await create_app(kube, namespace, rollout_body(routes=["nope"]))
    await _invalid(kube, namespace, "web", "no HTTP route named 'nope'")


async def test_missing_service_is_reported(kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    await create_app(kube, namespace, services=False)
    await _invalid(kube, namespace, "web", f"Service {namespace}/web-stable not found")


async def test_selector_not_matching_template_is_reported(kube: KubeClient, namespace: str,
                                                          controller: ControllerProcess) -> None:
    body = rollout_body()
    body["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    await create_app(kube, namespace, body)
    await _invalid(kube, namespace, "web", "spec.selector")


async def test_service_selecting_other_pods_is_reported(kube: KubeClient, namespace: str,
                                                        controller: ControllerProcess) -> None:
    ns = namespace
    await kube.create(SERVICES, service_body("web-stable"), namespace=ns)
    await kube.create(SERVICES, service_body("web-canary", {"app": "api"}), namespace=ns)
    await create_app(kube, ns, services=False)
    await _invalid(kube, ns, "web", "web-canary")


async def test_invalid_rollout_does_not_disturb_others(kube: KubeClient, namespace: str,
                                                       controller: ControllerProcess) -> None:
    ns = namespace
    broken = rollout_body("broken")
    broken["spec"]["strategy"]["canary"]["trafficRouting"]["istio"]["virtualService"]["name"] = "missing"
    await kube.create(ROLLOUTS, broken, namespace=ns)
    await create_app(kube, ns)
    await _invalid(kube, ns, "broken", "VirtualService")
    await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="the valid rollout is healthy")
    await set_image(kube, ns, "registry.example/web:2")
    await wait_status(kube, ns, paused_at(1), what="the valid rollout walks")
    assert await weights(kube, ns) == (90, 10)
    assert controller.alive, "an invalid Rollout crashed the controller"


async def test_replica_set_name_taken_by_another_owner_is_reported_without_a_hot_loop(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    ns = namespace
    body = rollout_body()
    name = f"web-{template_hash(body['spec']['template'])}"
    # What `kubectl delete rollout web --cascade=orphan` leaves behind: a ReplicaSet with sluice's name, no owner.
    labels = {"app": "orphan"}
    await kube.create(REPLICASETS, {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name}, "spec": {
        "replicas": 0, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}},
        namespace=ns)
    await create_app(kube, ns, body)
    st = await wait_status(kube, ns, lambda s: condition(s, "ReconcileError").get("status") == "True",
                           what="ReconcileError condition")
    assert "not controlled by this Rollout" in condition(st, "ReconcileError")["message"]
    items, _ = await kube.list(EVENTS, namespace=ns)
    assert [e["reason"] for e in items if e["reason"] == "ReconcileFailed"] == ["ReconcileFailed"]
    # Backing off, not hammering: the Rollout is not rewritten over and over.
    version = (await kube.get(ROLLOUTS, name="web", namespace=ns))["metadata"]["resourceVersion"]
    await asyncio.sleep(3)
    assert (await kube.get(ROLLOUTS, name="web", namespace=ns))["metadata"]["resourceVersion"] == version
    assert controller.alive
    # Once the namesake is gone, the Rollout recovers and the condition turns False.
    await kube.delete(REPLICASETS, name=name, namespace=ns)
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="recovered", timeout=90)
    assert condition(st, "ReconcileError")["status"] == "False"
