"""The canary engine on the real control plane: the controller process walks steps while the real ReplicaSet
controller, scheduler and KWOK make pods available; tests read the VirtualService, Services and ReplicaSets."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rollout.kube import EVENTS, ROLLOUTS, VIRTUALSERVICES, KubeClient
from strategies.model import REVISION_ANNOTATION, parse_time
from tests.integration.kit import (
    ControllerProcess,
    condition,
    create_app,
    patch_status,
    paused_at,
    pod_template,
    replica_sets,
    resume,
    rollout_body,
    selector_hash,
    set_image,
    status,
    wait_for,
    wait_status,
    weights,
)


async def _healthy(kube: KubeClient, ns: str, *, stable: str | None = None, timeout: float = 60) -> dict[str, Any]:
    return await wait_status(
        kube, ns, lambda st: st.get("phase") == "Healthy" and (stable is None or st.get("stableHash") == stable),
        what=f"Healthy{' on ' + stable if stable else ''}", timeout=timeout,
    )


async def _start_v2(kube: KubeClient, ns: str) -> tuple[str, str]:
    """First version Healthy, then a new image: returns (stable hash, canary hash) once paused after step 0."""
    v1 = str((await _healthy(kube, ns))["stableHash"])
    await set_image(kube, ns, "registry.example/web:2")
    st = await wait_status(kube, ns, paused_at(1), what="pause after setWeight 10")
    return v1, str(st["canaryHash"])


async def _at_fifty(kube: KubeClient, ns: str) -> tuple[str, str]:
    """Like _start_v2, then resumed to the second pause: canary at 50%."""
    v1, v2 = await _start_v2(kube, ns)
    await resume(kube, ns)
    await wait_status(kube, ns, paused_at(3), what="50% on v2")
    assert await weights(kube, ns) == (50, 50)
    return v1, v2


async def _scaled_to_zero(kube: KubeClient, ns: str, hash_: str, *, what: str) -> None:
    async def scaled() -> bool:
        return bool((await replica_sets(kube, ns))[hash_]["spec"]["replicas"] == 0)

    await wait_for(scaled, what=what, timeout=30)


async def _event_reasons(kube: KubeClient, ns: str, *wanted: str) -> list[str]:
    """The namespace's Event reasons, oldest first, once every `wanted` reason is among them.

    Rollout-level Events are written just after the status patch, so a test that has seen the status must wait for
    them rather than read once.
    """
    seen: list[str] = []

    async def listed() -> list[str] | None:
        items, _ = await kube.list(EVENTS, namespace=ns)
        seen[:] = [e["reason"] for e in sorted(items, key=lambda e: e["metadata"]["creationTimestamp"])]
        return seen if all(w in seen for w in wanted) else None

    try:
        return await wait_for(listed, what=f"Events {', '.join(wanted)}", timeout=15)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; reasons seen: {seen}") from None


async def test_first_version_goes_straight_to_healthy(kube: KubeClient, namespace: str,
                                                      controller: ControllerProcess) -> None:
    await create_app(kube, namespace)
    st = await _healthy(kube, namespace)
    v1 = st["stableHash"]
    assert st["canaryHash"] == v1
    assert st["currentStepIndex"] == 6 and st["canaryWeight"] == 0 and st["availableReplicas"] == 4
    assert await weights(kube, namespace) == (100, 0)
    assert await selector_hash(kube, namespace, "web-stable") == v1
    assert await selector_hash(kube, namespace, "web-canary") == v1
    assert condition(st, "Available")["status"] == "True"
    rollout = await kube.get(ROLLOUTS, name="web", namespace=namespace)
    assert st["observedGeneration"] == rollout["metadata"]["generation"]


async def test_full_walk_checks_weights_and_selectors_at_every_step(kube: KubeClient, namespace: str,
                                                                   controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns)
    v1, v2 = await _start_v2(kube, ns)
    assert v1 != v2
    for index, (stable_w, canary_w, canary_pods) in ((1, (90, 10, 1)), (3, (50, 50, 2)), (5, (0, 100, 4))):
        st = await wait_status(kube, ns, paused_at(index), what=f"paused at step {index}")
        assert await weights(kube, ns) == (stable_w, canary_w)
        assert st["canaryWeight"] == canary_w
        assert await selector_hash(kube, ns, "web-stable") == v1
        assert await selector_hash(kube, ns, "web-canary") == v2
        rs = await replica_sets(kube, ns)
        assert rs[v2]["spec"]["replicas"] == canary_pods
        assert rs[v1]["spec"]["replicas"] == 4
        assert st["canaryAvailableReplicas"] >= canary_pods
        await resume(kube, ns)
    st = await _healthy(kube, ns, stable=v2)
    assert await weights(kube, ns) == (100, 0)
    assert await selector_hash(kube, ns, "web-stable") == v2
    assert await selector_hash(kube, ns, "web-canary") == v2

    await _scaled_to_zero(kube, ns, v1, what="old stable scaled down after scaleDownDelaySeconds")
    reasons = await _event_reasons(kube, ns, "NewReplicaSetCreated", "ScalingReplicaSet", "TrafficWeightUpdated",
                                   "RolloutPaused", "RolloutResumed", "RolloutStepCompleted", "RolloutCompleted")
    # Every Event is also one structured (JSON) log line with the rollout's context.
    lines = [json.loads(line) for line in controller.log_path.read_text().splitlines() if line.startswith("{")]
    weight_lines = [line for line in lines if line.get("reason") == "TrafficWeightUpdated"]
    assert len(weight_lines) == reasons.count("TrafficWeightUpdated")
    for line in weight_lines:
        assert {"rollout", "revision", "step", "weight", "decision"} <= set(line)
        assert line["rollout"] == f"{ns}/web"
        assert line["revision"] == v2
    assert [line["weight"] for line in weight_lines] == [10, 50, 100, 0]


async def test_timed_pause_expires_from_start_time_in_status(kube: KubeClient, namespace: str,
                                                             controller: ControllerProcess) -> None:
    ns = namespace
    steps: list[dict[str, Any]] = [{"setWeight": 20}, {"pause": {"duration": "4s"}}, {"setWeight": 60},
                                   {"pause": {}}]
    await create_app(kube, ns, rollout_body(steps=steps))
    await _healthy(kube, ns)
    await set_image(kube, ns, "registry.example/web:2")
    st = await wait_status(kube, ns, paused_at(1), what="timed pause")
    started = parse_time(st["pauseConditions"][0]["startTime"])
    assert started is not None
    assert st["pauseConditions"][0]["reason"] == "CanaryPauseStep"
    assert await weights(kube, ns) == (80, 20)
    await wait_status(kube, ns, paused_at(3), what="pause expired and setWeight 60 done", timeout=30)
    # The pause was not skipped nor cut short: 4s from its start time, by this machine's clock (the controller's),
    # however late this test saw the pause begin.
    assert datetime.now(UTC) >= started + timedelta(seconds=4)
    assert await weights(kube, ns) == (40, 60)


async def test_indefinite_pause_waits_until_resumed(kube: KubeClient, namespace: str,
                                                   controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns)
    await _start_v2(kube, ns)
    # The controller resyncs and re-reconciles; the pause must hold without a human.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        st = await status(kube, ns)
        assert st["currentStepIndex"] == 1 and st["phase"] == "Paused"
        assert condition(st, "Paused")["reason"] == "CanaryPauseStep"
    await resume(kube, ns)
    await wait_status(kube, ns, paused_at(3), what="resumed to the next pause")
    assert await weights(kube, ns) == (50, 50)


async def test_user_pause_holds_the_rollout_until_unpaused(kube: KubeClient, namespace: str,
                                                           controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns, rollout_body(steps=[{"setWeight": 25}, {"setWeight": 75}, {"pause": {}}]))
    await _healthy(kube, ns)
    await kube.patch(ROLLOUTS, name="web", namespace=ns, patch={"spec": {"paused": True}})
    await set_image(kube, ns, "registry.example/web:2")
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Paused", what="paused by user")
    assert condition(st, "Paused")["reason"] == "PausedByUser"
    assert await weights(kube, ns) == (100, 0)
    await kube.patch(ROLLOUTS, name="web", namespace=ns, patch={"spec": {"paused": False}})
    await wait_status(kube, ns, paused_at(2), what="walked after unpause")
    assert await weights(kube, ns) == (25, 75)


async def test_abort_returns_all_traffic_to_stable_and_retry_restarts(kube: KubeClient, namespace: str,
                                                                      controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns)
    v1, v2 = await _at_fifty(kube, ns)
    await patch_status(kube, ns, {"abort": True})
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Degraded", what="aborted")
    assert condition(st, "Degraded")["reason"] == "RolloutAborted"
    assert "aborted" in st["message"]
    assert await weights(kube, ns) == (100, 0)
    assert await selector_hash(kube, ns, "web-canary") == v1
    assert await selector_hash(kube, ns, "web-stable") == v1

    await _scaled_to_zero(kube, ns, v2, what="canary scaled down after abortScaleDownDelaySeconds")
    await _event_reasons(kube, ns, "RolloutAborted")

    await patch_status(kube, ns, {"abort": False})
    st = await wait_status(kube, ns, paused_at(1), what="retry walks from the first step")
    assert st["canaryHash"] == v2
    assert await weights(kube, ns) == (90, 10)
    assert await selector_hash(kube, ns, "web-canary") == v2


async def test_new_template_mid_rollout_supersedes_the_canary(kube: KubeClient, namespace: str,
                                                              controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns)
    v1, v2 = await _at_fifty(kube, ns)
    await set_image(kube, ns, "registry.example/web:3")
    st = await wait_status(kube, ns, lambda s: s.get("canaryHash") not in (v1, v2) and paused_at(1)(s),
                           what="v3 at its first pause")
    v3 = st["canaryHash"]
    assert await weights(kube, ns) == (90, 10)
    assert await selector_hash(kube, ns, "web-canary") == v3
    assert await selector_hash(kube, ns, "web-stable") == v1
    rs = await replica_sets(kube, ns)
    assert rs[v3]["metadata"]["annotations"][REVISION_ANNOTATION] == "3"

    await _scaled_to_zero(kube, ns, v2, what="superseded canary scaled down")


async def test_back_to_stable_template_is_a_fast_rollback(kube: KubeClient, namespace: str,
                                                          controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns)
    v1, _ = await _at_fifty(kube, ns)
    await set_image(kube, ns, "registry.example/web:1")
    st = await _healthy(kube, ns, stable=v1)
    assert st["canaryHash"] == v1 and st["currentStepIndex"] == 6
    assert await weights(kube, ns) == (100, 0)
    assert await selector_hash(kube, ns, "web-canary") == v1
    await _event_reasons(kube, ns, "RolloutRolledBack")


async def test_progress_deadline_marks_degraded(kube: KubeClient, namespace: str,
                                                controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns)
    await _healthy(kube, ns)
    template = pod_template("registry.example/web:2", node_selector={"no-such-node": "true"})
    # The short deadline comes with v2: v1's pods may take longer than 3 s to start on a loaded machine.
    await kube.patch(ROLLOUTS, name="web", namespace=ns,
                     patch={"spec": {"template": template, "progressDeadlineSeconds": 3}})
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Degraded", what="deadline exceeded")
    assert condition(st, "Progressing")["reason"] == "ProgressDeadlineExceeded"
    assert condition(st, "Degraded")["reason"] == "ProgressDeadlineExceeded"
    assert await weights(kube, ns) == (100, 0)
    await _event_reasons(kube, ns, "ProgressDeadlineExceeded")


async def test_progress_deadline_abort_aborts(kube: KubeClient, namespace: str,
                                              controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns, rollout_body(progressDeadlineAbort=True))
    v1 = (await _healthy(kube, ns))["stableHash"]
    template = pod_template("registry.example/web:2", node_selector={"no-such-node": "true"})
    # The short deadline comes with v2: v1's pods may take longer than 3 s to start on a loaded machine.
    await kube.patch(ROLLOUTS, name="web", namespace=ns,
                     patch={"spec": {"template": template, "progressDeadlineSeconds": 3}})
    st = await wait_status(kube, ns, lambda s: condition(s, "Degraded").get("reason") == "RolloutAborted",
                           what="aborted by deadline")
    assert st["abort"] is True
    assert "ProgressDeadlineExceeded" in st["message"]
    assert await weights(kube, ns) == (100, 0)
    assert await selector_hash(kube, ns, "web-canary") == v1


async def test_scale_subresource_rescales_canary_share(kube: KubeClient, namespace: str,
                                                       controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns)
    v1, v2 = await _at_fifty(kube, ns)
    scale = await kube.get(ROLLOUTS, name="web", namespace=ns, subresource="scale")
    assert scale["spec"]["replicas"] == 4 and scale["status"]["selector"] == "app=web"
    # What an HPA does: write the scale subresource.
    await kube.patch(ROLLOUTS, name="web", namespace=ns, subresource="scale", patch={"spec": {"replicas": 10}})

    async def rescaled() -> bool:
        rs = await replica_sets(kube, ns)
        return bool(rs[v1]["spec"]["replicas"] == 10 and rs[v2]["spec"]["replicas"] == 5)

    await wait_for(rescaled, what="stable 10 and canary ceil(50% of 10)=5")
    st = await wait_status(kube, ns, lambda s: s.get("canaryAvailableReplicas") == 5, what="canary pods available")
    assert st["currentStepIndex"] == 3 and await weights(kube, ns) == (50, 50)
    scale = await kube.get(ROLLOUTS, name="web", namespace=ns, subresource="scale")
    assert scale["status"]["replicas"] == 15


async def test_old_replica_sets_kept_up_to_revision_history_limit(kube: KubeClient, namespace: str,
                                                                  controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns, rollout_body(replicas=1, steps=[], revisionHistoryLimit=2))
    hashes = [str((await _healthy(kube, ns))["stableHash"])]
    for version in (2, 3, 4, 5):
        await set_image(kube, ns, f"registry.example/web:{version}")
        previous = hashes[-1]

        def promoted(s: dict[str, Any], previous: str = previous) -> bool:
            return s.get("phase") == "Healthy" and s.get("stableHash") != previous

        st = await wait_status(kube, ns, promoted, what=f"v{version} promoted")
        hashes.append(str(st["stableHash"]))

    async def pruned() -> dict[str, dict[str, Any]] | None:
        rs = await replica_sets(kube, ns)
        zero = [h for h, body in rs.items() if body["spec"]["replicas"] == 0]
        return rs if set(rs) == set(hashes[-3:]) and len(zero) == 2 else None

    rs = await wait_for(pruned, what="only the stable and 2 old ReplicaSets left", timeout=40)
    revisions = sorted(int(body["metadata"]["annotations"][REVISION_ANNOTATION]) for body in rs.values())
    assert revisions == [3, 4, 5]


async def test_weights_changed_by_hand_are_put_back(kube: KubeClient, namespace: str,
                                                    controller: ControllerProcess) -> None:
    ns = namespace
    await create_app(kube, ns)
    await _start_v2(kube, ns)
    # A GitOps tool or a hand edit sends 70% to the canary while sluice holds it at 10%.
    await kube.patch(VIRTUALSERVICES, name="web", namespace=ns, patch_type="json", patch=[
        {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 30},
        {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 70},
    ])

    async def restored() -> bool:
        return await weights(kube, ns) == (90, 10)

    await wait_for(restored, what="weights put back within a resync", timeout=45)
    await _event_reasons(kube, ns, "TrafficWeightDrift")
    st = await status(kube, ns)
    assert st["canaryWeight"] == 10
    assert st["currentStepIndex"] == 1


async def test_first_version_that_cannot_start_exceeds_the_progress_deadline(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    body = rollout_body(progressDeadlineSeconds=3)
    body["spec"]["template"] = pod_template("registry.example/web:1", node_selector={"no-such-node": "true"})
    await create_app(kube, namespace, body)
    st = await wait_status(kube, namespace, lambda s: s.get("phase") == "Degraded", what="deadline exceeded")
    assert condition(st, "Progressing")["reason"] == "ProgressDeadlineExceeded"
    assert "0/4" in st["message"]
    await _event_reasons(kube, namespace, "ProgressDeadlineExceeded")
